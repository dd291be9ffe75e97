"""The catalogue at request time: attributes and availability held in process, the business rules
of a request turned into a mask over a bundle's items, and top-k over the items a mask keeps.

    Table       the whole catalogue in this process, column by column (numpy, one row per item id
                that has a record), brought up to date from the store (app/stores/catalog.py)
    BundleView  per bundle: the same columns aligned to the bundle's item indices (label 0 =
                padding), so a filter evaluates as a few vectorised comparisons; kept up to date
                by the changed rows only
    Catalog     the table, the views, the follower (polls the store's version a few times a second)
                and `rules()`: filter + rules of the deployment + availability + exclusions -> Rules
    top_eligible / popular_eligible   the candidates a mask keeps, exactly k whenever k exist
    from_candidates   whether a user's cached unfiltered candidates may answer a request's rules

Masks are cached per view and rule text until the catalogue changes; a filter text is parsed once
(app/serving/filters.py). docs/shop.md describes the behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from app.serving.errors import Refused
from app.serving.filters import (
    AVAILABLE,
    ITEM_ID,
    And,
    Cmp,
    FilterError,
    Flag,
    In,
    Kind,
    Node,
    Not,
    Or,
    RowError,
    as_kind,
    check_rows,
    parse_filter,
    type_check,
)
from app.stores.base import StoreUnavailable
from app.stores.catalog import CatalogStore, RecordChanged, SchemaConflict

if TYPE_CHECKING:
    from app.bundles.bundle import Bundle
    from app.bundles.index import TopKIndex

log = logging.getLogger("seqrec.catalog")
WINDOW = 16  # versions read per catch-up call (each at most one batch of rows), applied one by one
RELOAD_AFTER = 2000  # further behind than this many versions: read everything again
MASKS_PER_VIEW = 64
MERGE_TRIES = 5


def canonical(attrs: Mapping[str, Any]) -> str:
    """A record as stored: sorted keys, no spaces (a merge compares the stored text)."""
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------- the table
class _Column:
    """One attribute by table row (row 0: no record, always missing)."""

    def __init__(self, kind: Kind, capacity: int) -> None:
        self.kind = kind
        self.vocab: dict[str, int] = {}  # strings and list entries -> codes (append-only)
        self.words: list[str] = []  # code -> string
        if kind == "number":
            self.data = np.full(capacity, np.nan, np.float64)
        elif kind == "boolean":
            self.data = np.full(capacity, -1, np.int8)  # -1 missing, 0, 1
        elif kind == "string":
            self.data = np.full(capacity, -1, np.int32)  # vocabulary code, -1 missing
        else:  # list: codes per row, and rows per code (what `contains` reads)
            self.data = np.zeros(0, np.int8)
            self.lists: dict[int, tuple[int, ...]] = {}
            self.rows_of: dict[int, set[int]] = {}

    @property
    def missing(self) -> Any:
        return {"number": np.nan, "boolean": -1, "string": -1}[self.kind]

    def grow(self, capacity: int) -> None:
        if self.kind != "list" and capacity > len(self.data):
            grown = np.full(capacity, self.missing, self.data.dtype)
            grown[: len(self.data)] = self.data
            self.data = grown

    def code(self, s: str) -> int:
        c = self.vocab.get(s)
        if c is None:
            c = self.vocab[s] = len(self.words)
            self.words.append(s)
        return c

    def set(self, rows: np.ndarray, values: list[Any]) -> None:
        if self.kind == "number":
            self.data[rows] = np.array([np.nan if v is None else v for v in values], np.float64)
        elif self.kind == "boolean":
            self.data[rows] = np.array([-1 if v is None else int(v) for v in values], np.int8)
        elif self.kind == "string":
            self.data[rows] = np.array([-1 if v is None else self.code(v) for v in values], np.int32)
        else:
            for row, v in zip(rows.tolist(), values, strict=True):
                for c in self.lists.pop(row, ()):
                    self.rows_of[c].discard(row)
                if v:
                    codes = tuple(dict.fromkeys(self.code(s) for s in v))
                    self.lists[row] = codes
                    for c in codes:
                        self.rows_of.setdefault(c, set()).add(row)


class Table:
    """The catalogue in this process: one row per item id with a record, every attribute a column."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.ids: list[str] = [""]  # row 0: no record
        self.capacity = 1024
        self.available = np.ones(self.capacity, bool)
        self.present = np.zeros(self.capacity, bool)  # the row holds a record (not deleted)
        self.changed_at = np.zeros(self.capacity, np.int64)  # version of the record held
        self.columns: dict[str, _Column] = {}
        self.schema: dict[str, Kind] = {}
        self.version = 0  # every change up to here is applied
        self.items = 0  # rows holding a record

    def _row(self, item: str) -> int:
        row = self.rows.get(item)
        if row is None:
            row = self.rows[item] = len(self.ids)
            self.ids.append(item)
            if row >= self.capacity:
                self._grow(2 * self.capacity)
        return row

    def _grow(self, capacity: int) -> None:
        for name in ("available", "present", "changed_at"):
            old = getattr(self, name)
            new = np.ones(capacity, bool) if name == "available" else np.zeros(capacity, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        for col in self.columns.values():
            col.grow(capacity)
        self.capacity = capacity

    def learn(self, schema: Mapping[str, str]) -> None:
        for name, text in schema.items():
            kind = as_kind(text)
            if name not in self.schema and name != AVAILABLE and kind is not None:
                self.schema[name] = kind
                self.columns[name] = _Column(kind, self.capacity)

    def apply(self, changes: Sequence[tuple[str, int, dict[str, Any] | None]]) -> tuple[np.ndarray, list[str]]:
        """Replace records (None: deleted), skipping any older than the one held. Returns the rows
        written and the item ids that got a row now."""
        fresh_ids: list[str] = []
        latest: dict[str, tuple[int, dict[str, Any] | None]] = {}
        for item, version, attrs in changes:  # the last change of an item in the batch wins
            latest[item] = (version, attrs)
        picked: list[tuple[int, int, dict[str, Any] | None]] = []
        for item, (version, attrs) in latest.items():
            if item not in self.rows:
                if attrs is None:
                    continue  # deleted before this process saw it
                fresh_ids.append(item)
            row = self._row(item)
            if version >= self.changed_at[row]:
                picked.append((row, version, attrs))
        if not picked:
            return np.zeros(0, np.int64), fresh_ids
        rows = np.array([p[0] for p in picked], np.int64)
        records = [p[2] or {} for p in picked]
        self.changed_at[rows] = [p[1] for p in picked]
        was = self.present[rows].sum()
        self.present[rows] = [p[2] is not None for p in picked]
        self.items += int(self.present[rows].sum() - was)
        self.available[rows] = [bool(r.get(AVAILABLE, True)) for r in records]
        self.learn({k: _kind_of(v) for r in records for k, v in r.items() if k not in self.schema and k != AVAILABLE})
        for name, col in self.columns.items():
            col.set(rows, [r.get(name) for r in records])
        return rows, fresh_ids

    def record(self, item: str) -> dict[str, Any] | None:
        """An item's attributes as this process holds them (None: no record)."""
        row = self.rows.get(item)
        if row is None or not self.present[row]:
            return None
        out: dict[str, Any] = {AVAILABLE: bool(self.available[row])}
        for name, col in self.columns.items():
            if col.kind == "list":
                codes = col.lists.get(row)
                if codes is not None:
                    out[name] = [col.words[c] for c in codes]
                continue
            v = col.data[row]
            if col.kind == "number" and not np.isnan(v):
                out[name] = float(v)
            elif col.kind == "boolean" and v >= 0:
                out[name] = bool(v)
            elif col.kind == "string" and v >= 0:
                out[name] = col.words[int(v)]
        return out


def _kind_of(v: Any) -> Kind:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return "list" if isinstance(v, list) else "string"


# ---------------------------------------------------------------------------------- per bundle
@dataclass
class _Mask:
    version: int
    mask: np.ndarray  # (n + 1,) bool, read-only
    eligible: int
    _labels: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """The labels the mask keeps, ascending (computed once)."""
        if self._labels is None:
            self._labels = np.flatnonzero(self.mask)
        return self._labels


class BundleView:
    """The catalogue aligned to one bundle's item indices (label 0 = padding: never eligible)."""

    def __init__(self, bundle: Bundle, table: Table) -> None:
        self.table = table
        self.ids = bundle.item_ids
        self.n = len(bundle.item_ids)
        self.held = len(bundle.index_of)
        rows = table.rows
        self.row_of = np.zeros(self.n + 1, np.int64)  # label -> table row (0: no record)
        self.row_of[1:] = [rows.get(i, 0) for i in bundle.item_ids] if rows else 0
        self.label_of = np.zeros(table.capacity, np.int64)  # table row -> label (0: not in the bundle)
        has = self.row_of > 0
        self.label_of[self.row_of[has]] = np.flatnonzero(has)
        self.exists = np.ones(self.n + 1, bool)
        self.exists[0] = False
        if self.held != self.n:  # items removed online (text bundles) keep their label, not their id
            index_of = bundle.index_of
            gone = [r + 1 for r, i in enumerate(bundle.item_ids) if index_of.get(i) != r + 1]
            self.exists[gone] = False
        self.n_exist = int(self.exists.sum())
        self.columns: dict[str, np.ndarray] = {}
        self.available = table.available[self.row_of] & self.exists
        self.n_unavailable = self.n_exist - int(self.available.sum())
        self.version = 0  # bumped by every change that reaches this view
        self.masks: OrderedDict[tuple[Any, ...], _Mask] = OrderedDict()

    def current(self, bundle: Bundle) -> bool:
        """Whether the bundle's catalogue is still the one this view was built for."""
        return len(bundle.item_ids) == self.n and len(bundle.index_of) == self.held

    def column(self, name: str) -> np.ndarray:
        """An attribute aligned to labels (built once, then updated by `update`)."""
        col = self.columns.get(name)
        if col is None:
            col = self.columns[name] = self.table.columns[name].data[self.row_of]
        return col

    def contains(self, name: str, value: str) -> np.ndarray:
        """Labels whose list attribute holds `value`."""
        col = self.table.columns[name]
        out = np.zeros(self.n + 1, bool)
        code = col.vocab.get(value)
        if code is not None and col.rows_of.get(code):
            rows = np.fromiter(col.rows_of[code], np.int64)
            rows = rows[rows < len(self.label_of)]
            out[self.label_of[rows]] = True
            out[0] = False
        return out

    def update(self, rows: np.ndarray, fresh: list[str], index_of: Mapping[str, int]) -> None:
        """Rows of the table changed (`fresh`: ids that got a row now): bring the view along."""
        table = self.table
        if len(self.label_of) < table.capacity:
            grown = np.zeros(table.capacity, np.int64)
            grown[: len(self.label_of)] = self.label_of
            self.label_of = grown
        for item in fresh:
            label = index_of.get(item, 0)
            if 0 < label <= self.n:
                row = table.rows[item]
                self.row_of[label], self.label_of[row] = row, label
        labels = self.label_of[rows]
        ok = labels > 0
        labels, rows = labels[ok], rows[ok]
        if len(labels):
            for name, col in self.columns.items():
                col[labels] = table.columns[name].data[rows]
            self.available[labels] = table.available[rows] & self.exists[labels]
            self.n_unavailable = self.n_exist - int(self.available.sum())
        self.version += 1


# ---------------------------------------------------------------------------------- evaluation
def evaluate(node: Node, view: BundleView) -> np.ndarray:
    """A filter tree -> (n + 1,) bool over the view's labels. Attributes the catalogue does not
    have, and comparisons of another kind (a deployment's rule type-checked leniently), are false."""
    if isinstance(node, Not):
        return ~evaluate(node.arg, view)
    if isinstance(node, And | Or):
        out = evaluate(node.args[0], view)
        for a in node.args[1:]:
            out = out & evaluate(a, view) if isinstance(node, And) else out | evaluate(a, view)
        return out
    col: np.ndarray | None
    if node.attr == AVAILABLE:
        kind: str | None = "boolean"
        col = view.available.astype(np.int8)
    else:
        kind = view.table.schema.get(node.attr)
        col = view.column(node.attr) if kind is not None and kind != "list" else None
    false = np.zeros(view.n + 1, bool)
    if kind is None:
        return ~false if isinstance(node, Cmp) and node.op == "!=" else false
    if isinstance(node, Flag):
        return np.asarray(col == 1) if kind == "boolean" else false
    if isinstance(node, In):
        out = false
        for v in node.values:
            out = out | _equal(view, node.attr, kind, col, v)
        return out
    if node.op in ("=", "!="):
        eq = _equal(view, node.attr, kind, col, node.value)
        return eq if node.op == "=" else ~eq
    if kind != "number" or col is None or isinstance(node.value, bool | str):
        return false
    compare = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[node.op]
    with np.errstate(invalid="ignore"):  # NaN (missing) compares false
        return np.asarray(compare(col, node.value))


def _equal(view: BundleView, attr: str, kind: str, col: np.ndarray | None, v: Any) -> np.ndarray:
    none = np.zeros(view.n + 1, bool)
    if kind == "list":
        return view.contains(attr, v) if isinstance(v, str) else none
    assert col is not None
    if kind == "number":
        return col == v if isinstance(v, float) and not isinstance(v, bool) else none
    if kind == "boolean":
        return col == int(v) if isinstance(v, bool) else none
    code = view.table.columns[attr].vocab.get(v) if isinstance(v, str) else None
    return col == code if code is not None else none


# ---------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rules:
    """What a request may be answered with, over one bundle's labels."""

    mask: np.ndarray | None = None  # (n + 1,) bool, read-only; None: every item is eligible
    eligible: int = 0  # items the mask keeps (before `exclude`)
    labels: Callable[[], np.ndarray] | None = None  # the kept labels, ascending
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # labels asked away
    filtered: int | None = None  # items of the bundle the rules removed; None: no rule applied
    state: str | None = None  # "applied" | "stale" | "not_applied"; None: no rule at all

    @property
    def active(self) -> bool:
        return self.mask is not None or len(self.exclude) > 0

    def allowed(self, labels: np.ndarray) -> np.ndarray:
        """(m,) bool: which labels the mask keeps (a label newer than the mask: not kept)."""
        ok = labels > 0
        if self.mask is not None:
            inside = labels < len(self.mask)
            ok &= inside
            ok[inside] &= self.mask[labels[inside]]
        return ok

    def passes(self, labels: np.ndarray, away: np.ndarray | None = None) -> np.ndarray:
        """(m,) bool: which labels the mask keeps and neither `exclude` nor `away` names."""
        ok = self.allowed(labels)
        gone = self.exclude if away is None or not len(away) else np.concatenate([self.exclude, away])
        if len(gone):
            ok &= ~np.isin(labels, gone)
        return ok

    def keep(self, labels: np.ndarray) -> np.ndarray:
        """The labels (in order) these rules allow, the excluded ones dropped."""
        kept: np.ndarray = labels[self.passes(labels)]
        return kept


NO_RULES = Rules()


class RulesError(ValueError):
    """A rule of the deployment (SEQREC_RULES) that does not parse: the process does not start."""


@dataclass(frozen=True)
class Wanted:
    """The rules a request states."""

    filter: str | None = None
    exclude: tuple[str, ...] = ()
    include_unavailable: bool = False
    rule: str | None = None  # a named rule of the deployment


@dataclass(frozen=True)
class Limits:
    """How a masked top-k is found: over-fetch from the index, or score the eligible items exactly."""

    overfetch_max: int = 2000  # the most candidates asked of the index before scoring exactly
    exact_max: int = 20_000  # eligible sets this small are always scored exactly


class Catalog:
    """The catalogue of this process: the table, the per-bundle views, the store behind them."""

    def __init__(
        self,
        store: CatalogStore,
        rules: Mapping[str, str] | None = None,
        poll_s: float = 0.2,
        registry: CollectorRegistry | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.table = Table()
        self.views: weakref.WeakKeyDictionary[Bundle, BundleView] = weakref.WeakKeyDictionary()
        self.named = dict(rules or {})
        for name, text in self.named.items():  # syntax at start; attributes when they exist
            try:
                parse_filter(text)
            except FilterError as exc:
                raise RulesError(f"SEQREC_RULES: rule {name!r}: {exc}") from exc
        self.poll_s = poll_s
        self.loaded = store.kind == "memory"  # in process there is nothing to read first
        self.stale = False  # the last read of the store failed: rules use the last known state
        self.synced_at = time.monotonic()
        self.sync_lock = asyncio.Lock()  # one catch-up at a time
        self.syncs = Counter(
            "seqrec_catalog_sync_total", "Catalogue catch-ups by outcome", ["outcome"], registry=registry
        )

    # ----------------------------------------------------------------------- reading the store
    async def load(self) -> None:
        """Read the whole catalogue (not atomic: the version is read first, then every change
        after it is read again by `sync`) and swap it in."""
        table = Table()
        version = await self.store.version()
        _, schema, _ = await self.store.changes(version, version)
        table.learn(schema)
        async for chunk in self.store.scan():
            table.apply([(i, version, json.loads(r)) for i, r in chunk])
            await asyncio.sleep(0)  # let requests through between chunks
        table.version = version
        self.table = table
        self.views = weakref.WeakKeyDictionary()
        self.loaded = True
        self.syncs.labels("full").inc()
        log.info("catalogue: %d items at version %d", table.items, version)

    async def sync(self) -> None:
        """Catch up with the store (StoreUnavailable when it cannot be read)."""
        async with self.sync_lock:
            if not self.loaded:
                await self.load()
            now = await self.store.version()
            if now < self.table.version or now - self.table.version > RELOAD_AFTER:
                await self.load()  # a store restored from an older state, or far ahead: read it all
                now = await self.store.version()
            while self.table.version < now:
                since = self.table.version
                now, schema, changes = await self.store.changes(since, since + WINDOW)
                self.table.learn(schema)
                by_version: dict[int, list[tuple[str, int, dict[str, Any] | None]]] = {}
                for i, v, r in changes:
                    by_version.setdefault(v, []).append((i, v, None if r is None else json.loads(r)))
                for v in sorted(by_version):  # a batch at a time, letting requests through in between
                    self._apply(by_version[v])
                    await asyncio.sleep(0)
                self.table.version = max(self.table.version, min(since + WINDOW, now))
                self.syncs.labels("changes").inc()
        self.stale, self.synced_at = False, time.monotonic()

    async def follow(self) -> None:
        """Poll the store's version for the life of the process (cancelled by the lifespan)."""
        me = asyncio.current_task()
        while True:
            try:
                await self.sync()
            except StoreUnavailable as exc:
                if not self.stale:
                    log.warning("catalogue store unreachable, rules use the last known catalogue: %s", exc)
                self.stale = True
                self.syncs.labels("unavailable").inc()
            except Exception:  # a bad record must not stop the follower
                log.exception("cannot apply a catalogue change")
            # A cancel that lands inside the Redis client can come out as a connection error or not at
            # all; the task still says it is being cancelled, and shutdown must not wait for it.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(self.poll_s)

    def _apply(self, changes: list[tuple[str, int, dict[str, Any] | None]]) -> None:
        rows, fresh = self.table.apply(changes)
        for bundle, view in list(self.views.items()):
            if len(view.label_of) < self.table.capacity or len(rows) or fresh:
                view.update(rows, fresh, bundle.index_of)

    # ----------------------------------------------------------------------- writing
    async def put(self, rows: Sequence[Any], max_errors: int = 20) -> tuple[int, list[RowError], int]:
        """Store whole records (all or nothing): (version, [], count) or (0, errors, error count)."""
        checked = check_rows(rows, self.table.schema, max_errors)
        if checked.errors:
            return 0, checked.errors, checked.error_count
        records = {item: canonical(attrs) for item, attrs in checked.rows}
        try:
            version = await self.store.write(dict(records), {k: str(v) for k, v in checked.kinds.items()})
        except SchemaConflict as exc:
            return 0, _conflict_rows(rows, exc, max_errors), 1
        self._written(version, {i: json.loads(r) for i, r in records.items()}, checked.kinds)
        return version, [], len(records)

    async def merge(self, item: str, change: dict[str, Any]) -> tuple[int, dict[str, Any] | None, list[RowError]]:
        """Merge attributes into an item's record (null removes one); (version, record, errors)."""
        for _ in range(MERGE_TRIES):
            stored = await self.store.get(item)
            record = json.loads(stored) if stored else {AVAILABLE: True}
            record.update(change)
            record = {k: v for k, v in record.items() if v is not None}
            record.setdefault(AVAILABLE, True)
            checked = check_rows([{ITEM_ID: item, **record}], self.table.schema, 20)
            if checked.errors:
                return 0, None, checked.errors
            attrs = checked.rows[0][1]
            try:
                kinds = {k: str(v) for k, v in checked.kinds.items()}
                version = await self.store.write({item: canonical(attrs)}, kinds, expect=stored or "")
            except RecordChanged:
                continue
            except SchemaConflict as exc:
                return 0, None, [RowError(0, exc.attr, f"is a {exc.held} in the catalogue")]
            self._written(version, {item: attrs}, checked.kinds)
            return version, attrs, []
        raise StoreUnavailable("the record kept changing under the merge; retry")

    async def delete(self, item: str) -> int:
        version = await self.store.write({item: None}, {})
        self._written(version, {item: None}, {})
        return version

    def _written(self, version: int, records: Mapping[str, dict[str, Any] | None], kinds: Mapping[str, str]) -> None:
        """Apply this process's own write at once (others see it at their next poll)."""
        self.table.learn(kinds)
        self._apply([(i, version, a) for i, a in records.items()])
        if self.table.version == version - 1:
            self.table.version = version

    # ----------------------------------------------------------------------- request time
    def attach(self, bundles: Sequence[Bundle]) -> None:
        """Build the views of freshly loaded bundles now, not at their first request."""
        if self.table.items:
            for b in bundles:
                self.view(b)

    def view(self, bundle: Bundle) -> BundleView:
        v = self.views.get(bundle)
        if v is None or not v.current(bundle):
            v = self.views[bundle] = BundleView(bundle, self.table)
        return v

    def state(self) -> str:
        return "not_applied" if not self.loaded else "stale" if self.stale else "applied"

    def rules(self, bundle: Bundle, wanted: Wanted, variant: str | None = None) -> Rules:
        """The request's rules over `bundle`: the client's filter, the deployment's rules (`default`,
        the variant's, a named one), availability, and the ids asked away. FilterError for a client
        filter that does not parse or fit the catalogue; Refused for an unknown rule name."""
        texts: list[tuple[str, bool]] = []  # (filter text, strict type check)
        for name in ("default", variant):
            if name is not None and name in self.named:
                texts.append((self.named[name], False))
        if wanted.rule is not None:
            if wanted.rule not in self.named:
                known = ", ".join(sorted(self.named)) or "none"
                raise Refused(f"rule: unknown rule; defined: {known}")
            texts.append((self.named[wanted.rule], False))
        if wanted.filter is not None:
            tree = parse_filter(wanted.filter)
            if self.loaded:
                type_check(tree, {**self.table.schema, AVAILABLE: "boolean"})
            texts.append((wanted.filter, True))
        exclude = bundle.encode(wanted.exclude) if wanted.exclude else NO_RULES.exclude
        if not self.loaded:  # nothing known of the catalogue yet: only the exclusions apply
            if not texts and not len(exclude):
                return NO_RULES
            return Rules(exclude=exclude, filtered=len(np.unique(exclude)), state="not_applied")
        if not texts and not self.table.items and not len(exclude):
            return NO_RULES  # the common case of a shop without a catalogue: nothing to do
        view = self.view(bundle)
        availability = not wanted.include_unavailable and view.n_unavailable > 0
        if not texts and not availability:
            if not len(exclude):
                return NO_RULES
            return Rules(exclude=exclude, filtered=len(np.unique(exclude)), state=self.state())
        got = self._mask(view, tuple(t for t, _ in texts), availability)
        kept_away = int(got.mask[exclude].sum()) if len(exclude) else 0
        return Rules(
            mask=got.mask,
            eligible=got.eligible,
            labels=lambda: got.labels,
            exclude=exclude,
            filtered=view.n_exist - got.eligible + kept_away,
            state=self.state(),
        )

    def _mask(self, view: BundleView, texts: tuple[str, ...], availability: bool) -> _Mask:
        key = (texts, availability)
        got = view.masks.get(key)
        if got is not None and got.version == view.version:
            view.masks.move_to_end(key)
            return got
        mask = view.exists.copy()
        if availability:
            mask &= view.available
        for text in texts:
            mask &= evaluate(parse_filter(text), view)
        mask.flags.writeable = False
        got = view.masks[key] = _Mask(view.version, mask, int(mask.sum()))
        if len(view.masks) > MASKS_PER_VIEW:
            view.masks.popitem(last=False)
        return got

    def status(self) -> dict[str, Any]:
        return {
            "version": self.table.version,
            "items": self.table.items,
            "attributes": {AVAILABLE: "boolean", **self.table.schema},
            "state": "loading" if not self.loaded else "stale" if self.stale else "current",
            "rules": dict(self.named),
        }


def _conflict_rows(rows: Sequence[Any], exc: SchemaConflict, max_errors: int) -> list[RowError]:
    hit = [n for n, r in enumerate(rows) if isinstance(r, Mapping) and r.get(exc.attr) is not None]
    return [RowError(n, exc.attr, f"is a {exc.held} in the catalogue") for n in hit[:max_errors]]


# ---------------------------------------------------------------------------------- top-k
def top_eligible(
    index: TopKIndex,
    vectors: Callable[[np.ndarray], np.ndarray],
    query: np.ndarray,
    want: int,
    exclude: np.ndarray,
    rules: Rules,
    size: int,
    limits: Limits = Limits(),
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """The best `want` labels the rules keep (fewer only when fewer exist), best first; and the
    index's unfiltered candidates when it answered (a list the user cache may keep), else None.

    `exclude`: labels never returned (the seen history, the item itself); `size`: labels 1..size
    are searchable. Without a mask: one index search, as without rules. With one: the index is
    asked for want / (kept fraction) x 1.5 candidates (bounded by `limits.overfetch_max`) when the
    kept set is large or most of the catalogue; otherwise, or when the candidates hold fewer than
    `want` kept items, the kept set's vectors are scored exactly (its vectors times the query), so k
    items come back whenever k exist."""
    away = np.concatenate([exclude, rules.exclude]) if len(rules.exclude) else exclude
    if rules.mask is None:
        labels, scores = index.search(query, want, [away])
        ok = labels[0] > 0
        return labels[0][ok], scores[0][ok], None
    if rules.eligible == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), None
    fetch = math.ceil(want * size / rules.eligible * 1.5) + len(away) + 8
    # Ask the index when the kept set is too large to score at once, or when the rules keep most items.
    if index_first(rules, size, limits) and fetch <= limits.overfetch_max:
        labels, scores = index.search(query, fetch, [away])
        ok = labels[0] > 0
        raw_l, raw_s = labels[0][ok], scores[0][ok]
        keep = rules.allowed(raw_l)
        if int(keep.sum()) >= want:
            return raw_l[keep][:want], raw_s[keep][:want], (raw_l, raw_s)
    assert rules.labels is not None
    cand = rules.labels()
    cand = cand[cand <= size]
    if len(away):
        cand = cand[~np.isin(cand, away)]
    if len(cand) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), None
    scores = vectors(cand) @ np.asarray(query, np.float32).reshape(-1)
    top = np.argpartition(-scores, want - 1)[:want] if want < len(cand) else np.arange(len(cand))
    best = top[np.argsort(-scores[top], kind="stable")]
    return cand[best], scores[best].astype(np.float32), None


def index_first(rules: Rules, size: int, limits: Limits) -> bool:
    """Whether `top_eligible` filters the index's candidates before scoring the kept set exactly: the
    kept set is too large to score at once, or most of the catalogue."""
    return rules.eligible > limits.exact_max or 2 * rules.eligible >= size


def from_candidates(rules: Rules, k: int, depth: int, size: int, exact: bool, limits: Limits = Limits()) -> bool:
    """Whether a user's best `depth` unfiltered candidates should answer these rules for k items.

    Their survivors' top k is the rules' top k whenever k survive (no better kept item lies below
    the candidates). Worth it when about 2k are expected to survive (the kept share of the catalogue
    times `depth`); and only where `top_eligible` would also answer from the index's candidates, or
    where the index is exact (then the kept set's exact scores rank alike)."""
    if rules.mask is None:
        return True  # exclusions alone remove at most their own count
    if rules.eligible * depth < 2 * k * size:
        return False
    return exact or index_first(rules, size, limits)


def popular_eligible(popular: np.ndarray, want: int, rules: Rules) -> np.ndarray:
    """The `want` most popular labels the rules keep (popularity answers obey the rules too)."""
    if not rules.active:
        return popular[:want]
    out: list[np.ndarray] = []
    have, start, step = 0, 0, max(64, 4 * want)
    while have < want and start < len(popular):
        part = rules.keep(popular[start : start + step])
        out.append(part)
        have += len(part)
        start += step
        step *= 4
    return np.concatenate(out)[:want] if out else popular[:0]
