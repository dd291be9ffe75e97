"""Online evaluation: score what was served against what the user did next.

Every answer of GET /recommend is remembered per user and bundle (the top `k` ids, the variant
that served it and the time it was served, for `ttl_s`). Each event of POST /events is scored
against, per bundle, the latest list served to its user at or before the event arrived, unless an
earlier event took that list already:

    rank r = the item's 1-based position in the list (none when absent)
    hit@k = [r <= k]      reciprocal rank = 1/r (0 when absent)      NDCG@k = 1/log2(r + 1)

An event with no such list counts as `unserved`, not as a miss. Only the user's first event of a
batch (by time) is scored: it is the one the list was a prediction for. Catalogue coverage is the
number of distinct items served over the window divided by the catalogue size, per bundle and
variant.

Exact across workers and replicas: a list reaches the shared ledger at most the batch window plus
the store timeout after it was served (or its write is abandoned and counted), so each event is
looked up that long (`settle_s`) after it arrived, whichever process took it; the ledger keeps the
last few lists per user and bundle with their serve times, so a list served after the event (the
user asked again meanwhile) neither replaces the one the event is scored against nor is scored
against it.

Inside an experiment, each user's totals (served, scored, hits, ndcg, rr) are kept per experiment
and variant, for the user-clustered statistics and the sequential test (app/serving/abtest.py).

Where it lives: app/stores/ledger.py (Redis, shared by every process, or in process). Tracking
never delays or fails a request: it runs in background tasks, a failing or slow Redis skips it
(counted in `seqrec_online_skipped_total`), and at most `max_inflight` tracking tasks run at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from app.stores.ledger import (
    MINUTE,
    TOTALS,
    Counts,
    Items,
    Ledger,
    MemoryLedger,
    Served,
    Users,
    Window,
    online_ledger,
)

log = logging.getLogger("seqrec.app")

FIELDS = ("served", "scored", "hits", "rr", "ndcg")
OUTSIDE = {"default", "explicit"}  # traffic outside an experiment's split: no per-user totals
# How much later than its own batch window and store timeout another process's list may still
# land (its event loop busy when the write was due): added to the look's delay.
SETTLE_SLACK_S = 0.1


@dataclass(frozen=True, slots=True)
class Score:
    rank: int | None
    hit: float
    rr: float
    ndcg: float


def score(items: Sequence[str], target: str, k: int) -> Score:
    """hit@k, reciprocal rank and NDCG@k of one served list against the next item."""
    try:
        r = list(items).index(target) + 1
    except ValueError:
        return Score(None, 0.0, 0.0, 0.0)
    if r > k:
        return Score(r, 0.0, 1.0 / r, 0.0)
    return Score(r, 1.0, 1.0 / r, 1.0 / math.log2(r + 1))


def experiment_scope(spec: str, salt: str) -> str:
    """The key of an experiment's per-user totals: the same split (spec and salt) -> the same key;
    any change of variants, bundles, weights or salt starts a new one."""
    return hashlib.blake2b(f"{salt}\x00{spec}".encode(), digest_size=6).hexdigest()


def _key(bundle: str, variant: str, what: str) -> str:
    return f"{bundle}|{variant}|{what}"


class OnlineMetrics:
    """`seqrec_online_*` Prometheus series. Labels: bundle and variant only, never users or items."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.served = Counter("seqrec_online_served_total", "Lists remembered", ["bundle", "variant"], registry=r)
        self.events = Counter(
            "seqrec_online_events_total", "Events by online outcome (scored, unserved)", ["outcome"], registry=r
        )
        self.scored = Counter(
            "seqrec_online_scored_total", "Served lists scored by a next event", ["bundle", "variant"], registry=r
        )
        self.hits = Counter(
            "seqrec_online_hits_total", "Next items within the top k", ["bundle", "variant"], registry=r
        )
        self.rr = Counter(
            "seqrec_online_reciprocal_rank_total", "Sum of reciprocal ranks", ["bundle", "variant"], registry=r
        )
        self.ndcg = Counter("seqrec_online_ndcg_total", "Sum of NDCG@k", ["bundle", "variant"], registry=r)
        self.skipped = Counter(
            "seqrec_online_skipped_total", "Tracking skipped (store error, overload)", ["op"], registry=r
        )


@dataclass
class _Look:
    """Events of one POST /events waiting for their look: due at `due` (loop time), after `writes`."""

    due: float
    writes: set[asyncio.Task[None]]
    arrived: float  # wall clock: the lists served at or before it count
    next_item: dict[str, str]  # user -> the item of the user's first event in the batch
    extra: int  # the batch's other events of the same users: unserved


def _totals() -> defaultdict[tuple[str, str], defaultdict[str, list[float]]]:
    return defaultdict(lambda: defaultdict(lambda: [0.0] * len(TOTALS)))


@dataclass
class Live:
    """Online tracking; one per process, held by AppState (which also holds the experiment).

    Per answer, the only store work is one single-key command (the user's list), and the answers
    of `write_delay_s` (SEQREC_ONLINE_BATCH_MS) share one pipeline; counters, coverage and
    per-user totals accumulate in process and are flushed every `flush_s` (so GET /stats/online
    lags by at most that, plus `settle_s`).

    Each event is looked up once, `settle_s` after it arrived (and after this process's own
    writes in flight then): by that time every list served before it, by any process, is in the
    ledger. The looks of all events due together share one pipeline."""

    ledger: Ledger
    metrics: OnlineMetrics
    k: int = 10
    tracking: bool = True
    max_inflight: int = 1000
    flush_s: float = 1.0
    write_delay_s: float = 0.0
    settle_s: float = 0.0  # 0: look as soon as this process's writes are done (no other process writes)
    clock: Callable[[], float] = time.time
    bundles: Callable[[], Iterable[str]] = tuple  # names of the bundles now served (lists are per bundle)
    experiment: Callable[[], Any] = lambda: None  # the running Experiment (spec, salt), or None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _outbox: list[tuple[str, Served]] = field(default_factory=list)
    _writer: asyncio.Task[None] | None = None
    _writes: set[asyncio.Task[None]] = field(default_factory=set)  # list writes not finished yet
    _counts: Counts = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    _items: Items = field(default_factory=lambda: defaultdict(set))
    _users: Users = field(default_factory=lambda: defaultdict(set))
    _totals: defaultdict[tuple[str, str], defaultdict[str, list[float]]] = field(default_factory=_totals)
    _flusher: asyncio.Task[None] | None = None
    _looks: deque[_Look] = field(default_factory=deque)
    _waiting: int = 0  # users in _looks
    _looker: asyncio.Task[None] | None = None
    _scope: tuple[Any, str] = (None, "")  # (the experiment, its scope) last seen

    def _spawn(self, op: str, coro: Any) -> asyncio.Task[None] | None:
        if len(self._tasks) >= self.max_inflight:
            coro.close()
            self.metrics.skipped.labels(op).inc()
            return None
        task = asyncio.get_running_loop().create_task(self._guard(op, coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every())
        return task

    async def _guard(self, op: str, coro: Any) -> None:
        try:
            await coro
        except Exception as exc:  # tracking must never surface: count it and go on
            self.metrics.skipped.labels(op).inc()
            log.debug("online tracking %s skipped: %r", op, exc)

    def minute(self) -> int:
        return int(self.clock() // MINUTE)

    def scope_of(self, variant: str) -> str:
        """The running experiment's scope when `variant` is one of its variants, else ""."""
        exp = self.experiment()
        if exp is None or variant in OUTSIDE:
            return ""
        if self._scope[0] is not exp:
            self._scope = (exp, experiment_scope(exp.spec, exp.salt))
        return self._scope[1]

    def served(self, user: str, bundle: str, variant: str, items: Sequence[str]) -> None:
        """Remember a served list (non-blocking)."""
        if not self.tracking:
            return
        entry = Served(bundle, variant, tuple(items[: self.k]), self.clock(), self.scope_of(variant))
        self.metrics.served.labels(bundle, variant).inc()
        minute, group = self.minute(), f"{bundle}|{variant}"
        self._counts[minute][f"{group}|served"] += 1
        self._items[(minute, group)].update(entry.items)
        if entry.scope:
            self._totals[(entry.scope, variant)][user][0] += 1
        if len(self._outbox) >= self.max_inflight:
            self.metrics.skipped.labels("served").inc()
            return
        self._outbox.append((user, entry))
        if self._writer is None:
            self._writer = self._spawn("served", self._write_outbox())
            if self._writer is not None:
                self._writes.add(self._writer)
                self._writer.add_done_callback(self._writes.discard)

    async def _write_outbox(self) -> None:
        # Answers of `write_delay_s` join the batch: one pipeline for all.
        await asyncio.sleep(self.write_delay_s)
        batch, self._outbox = self._outbox, []
        self._writer = None
        try:
            await self.ledger.remember(batch)
        except Exception as exc:
            self.metrics.skipped.labels("served").inc(len(batch))
            log.debug("online tracking: %d served lists not kept: %r", len(batch), exc)

    def observe(self, events: Iterable[tuple[str, str, float]]) -> None:
        """Score the users' next events (user, item, time) against what they were served (non-blocking)."""
        if not self.tracking:
            return
        first: dict[str, tuple[float, str]] = {}
        extra = 0
        for user, item, ts in events:
            if user not in first:
                first[user] = (ts, item)
            else:
                extra += 1
                if ts < first[user][0]:
                    first[user] = (ts, item)
        if not first:
            return
        if self._waiting + len(first) > 10 * self.max_inflight:  # a store far behind: drop, and count
            self.metrics.skipped.labels("observe").inc(len(first) + extra)
            return
        due = asyncio.get_running_loop().time() + self.settle_s
        look = _Look(due, set(self._writes), self.clock(), {u: it for u, (_, it) in first.items()}, extra)
        self._looks.append(look)
        self._waiting += len(first)
        if self._looker is None:
            self._looker = self._spawn("observe", self._look())
            if self._looker is None:  # over the in-flight bound: this batch is dropped (counted)
                self._looks.pop()
                self._waiting -= len(first)

    async def _look(self) -> None:
        """Take the lists of every event that is due, in one pipeline per round."""
        loop = asyncio.get_running_loop()
        try:
            while self._looks:
                head = self._looks[0]
                if head.writes:
                    await asyncio.wait(head.writes)
                await asyncio.sleep(max(0.0, head.due - loop.time()))
                now, batch = loop.time(), []
                while self._looks and self._looks[0].due <= now and all(t.done() for t in self._looks[0].writes):
                    batch.append(self._looks.popleft())
                asks = [(u, look.arrived, it) for look in batch for u, it in look.next_item.items()]
                self._waiting -= len(asks)
                try:
                    lists = await self.ledger.take([(u, t) for u, t, _ in asks], list(self.bundles()))
                except Exception as exc:  # skipped and counted, never raised
                    self.metrics.skipped.labels("observe").inc(len(asks))
                    log.debug("online tracking: %d events not scored: %r", len(asks), exc)
                    continue
                self._score([(u, it) for u, _, it in asks], lists, sum(look.extra for look in batch))
        finally:
            self._looker = None

    def _score(self, asks: Sequence[tuple[str, str]], lists: Sequence[Sequence[Served]], unserved: int) -> None:
        """Count each user's next item against the lists served before it, and the unserved events."""
        minute = self.minute()
        counts = self._counts[minute]
        m = self.metrics
        for (user, item), entries in zip(asks, lists, strict=True):
            if not entries:
                unserved += 1
                continue
            m.events.labels("scored").inc()
            for e in entries:
                s = score(e.items, item, self.k)
                for what, v in (("scored", 1.0), ("hits", s.hit), ("rr", s.rr), ("ndcg", s.ndcg)):
                    counts[_key(e.bundle, e.variant, what)] += v
                self._users[(minute, f"{e.bundle}|{e.variant}")].add(user)
                if e.scope:
                    t = self._totals[(e.scope, e.variant)][user]
                    t[1] += 1.0
                    t[2] += s.hit
                    t[3] += s.ndcg
                    t[4] += s.rr
                m.scored.labels(e.bundle, e.variant).inc()
                m.hits.labels(e.bundle, e.variant).inc(s.hit)
                m.rr.labels(e.bundle, e.variant).inc(s.rr)
                m.ndcg.labels(e.bundle, e.variant).inc(s.ndcg)
        counts["|unserved"] += unserved
        m.events.labels("unserved").inc(unserved)

    async def flush(self) -> None:
        """Send what this process gathered to the ledger (lost, and counted, on error)."""
        if not (self._counts or self._items or self._users or self._totals):
            return
        counts, items, users, totals = self._counts, self._items, self._users, self._totals
        self._counts, self._items = defaultdict(lambda: defaultdict(float)), defaultdict(set)
        self._users, self._totals = defaultdict(set), _totals()
        try:
            await self.ledger.add(
                {m: dict(c) for m, c in counts.items()},
                dict(items),
                dict(users),
                {arm: dict(per_user) for arm, per_user in totals.items()},
                self.clock(),
            )
        except Exception as exc:
            self.metrics.skipped.labels("counts").inc()
            log.debug("online tracking: counters not flushed: %r", exc)

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def drain(self) -> None:
        """Wait for the tracking in flight and flush the counters (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.drain()

    async def window(self, minutes: int) -> Window:
        now = self.minute()
        return await self.ledger.window(list(range(now - minutes + 1, now + 1)))

    async def experiment_sums(self, exp: Any) -> tuple[str, dict[str, dict[str, float]]]:
        """(scope, per variant the sums over its users) of an experiment, since it started."""
        scope = experiment_scope(exp.spec, exp.salt)
        return scope, await self.ledger.experiment(scope, [v.name for v in exp.variants])


def summarize(window: Window, catalogue: Callable[[str], int | None]) -> tuple[int, list[dict[str, Any]]]:
    """(unserved events, one row per bundle and variant) from the window's counters."""
    groups: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
    for key, v in window.counts.items():
        parts = key.split("|")
        if len(parts) == 3 and parts[2] in FIELDS:
            groups[(parts[0], parts[1])][parts[2]] += v
    rows = []
    for (bundle, variant), c in sorted(groups.items()):
        n = int(c["scored"])
        size = catalogue(bundle)
        d = window.items.get(f"{bundle}|{variant}", 0)
        rows.append(
            {
                "bundle": bundle,
                "variant": variant,
                "served": int(c["served"]),
                "scored": n,
                "users": window.users.get(f"{bundle}|{variant}", 0),
                "hits": round(c["hits"]),
                "hit_rate": c["hits"] / n if n else None,
                "mrr": c["rr"] / n if n else None,
                "ndcg": c["ndcg"] / n if n else None,
                "distinct_items": d,
                "coverage": d / size if size else None,
            }
        )
    return int(window.counts.get("|unserved", 0)), rows


def make_live(
    settings: Any,
    store: Any,
    metrics: Any,
    bundles: Callable[[], Iterable[str]] = tuple,
    experiment: Callable[[], Any] = lambda: None,
) -> Live:
    """The process's online tracking from the settings (tracking=False: nothing is recorded)."""
    if not settings.online_tracking:
        return Live(MemoryLedger(1), OnlineMetrics(metrics.registry), settings.online_k, tracking=False)
    # A list another process served is in the store at most its batch window plus the store timeout
    # after the answer (or its write was abandoned and counted as skipped): each event waits that
    # long for its look. A list is kept until its successor is older than the look's wait (plus
    # half a second for clocks and busy loops): no event can still be scored against it then.
    settle = settings.online_batch_ms / 1000 + settings.redis_timeout + SETTLE_SLACK_S
    ledger = online_ledger(
        store,
        settings.key_prefix,
        settings.online_ttl_s,
        settings.redis_timeout,
        horizon_s=settle + 0.5,
        max_lists=settings.online_max_lists,
        totals_ttl_s=settings.online_experiment_ttl_s,
        stats_timeout=settings.redis_write_timeout,
    )
    return Live(
        ledger,
        OnlineMetrics(metrics.registry),
        settings.online_k,
        bundles=bundles,
        experiment=experiment,
        write_delay_s=settings.online_batch_ms / 1000,
        settle_s=settle if ledger.shared else 0.0,
    )
