"""Interactions -> per-user sequences: k-core, stable time order, id remap, splits, sessions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from training.data.readers import DatasetError, Interactions


@dataclass
class SeqData:
    """Prepared dataset: every user's items in time order, CSR-packed.

    Item indices are 1..num_items (0 is padding); `item_ids[i - 1]` is the external id of
    index i. `sequence(u)` returns user u's items (int64), oldest first.
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (total,) int32, values in 1..num_items
    timestamps: np.ndarray | None  # (total,) int64 or None
    # (total,) int32 index into session_ids, or None: the log's own session column. Session
    # indices follow first appearance in the file, so without timestamps they give the order.
    sessions: np.ndarray | None = None
    session_ids: list[str] | None = None
    # Where the data came from and how it was cut (source, filter report, notes, sessions,
    # split): enough to rebuild it, so a checkpoint can find its data again.
    meta: dict[str, Any] = field(default_factory=dict)
    # (total,) int8 index into type_names, aligned with items, or None: untyped events
    # (training/event_types.py reads them).
    types: np.ndarray | None = None
    type_names: list[str] | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return int(self.offsets[-1])

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]].astype(np.int64)

    def sequences(self) -> list[np.ndarray]:
        return [self.sequence(u) for u in range(self.num_users)]

    def times(self, u: int) -> np.ndarray | None:
        if self.timestamps is None:
            return None
        return self.timestamps[self.offsets[u] : self.offsets[u + 1]]

    def item_index(self) -> dict[str, int]:
        return {x: i + 1 for i, x in enumerate(self.item_ids)}

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256()
        h.update(self.offsets.tobytes())
        h.update(self.items.astype(np.int32).tobytes())
        h.update("\n".join(self.item_ids).encode())
        if self.sessions is not None:
            h.update(self.sessions.astype(np.int32).tobytes())
        if self.types is not None:  # untyped data keeps the fingerprint it always had
            h.update(self.types.astype(np.int8).tobytes())
            h.update("\n".join(self.type_names or []).encode())
        return h.hexdigest()

    def stats(self) -> dict[str, float | int | str]:
        lens = np.diff(self.offsets)
        return {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "avg_len": round(float(lens.mean()), 2) if len(lens) else 0.0,
            "min_len": int(lens.min()) if len(lens) else 0,
            "max_len": int(lens.max()) if len(lens) else 0,
            "density": round(self.num_interactions / max(1, self.num_users * self.num_items), 6),
            **({"sessions": len(np.unique(self.sessions))} if self.sessions is not None else {}),
        }


# Ids read from text files are Python strings (object arrays). np.unique sorts every row of those
# by Python comparisons (about 2 s per million rows on a 2-core EPYC); hashing takes a tenth of it.


def _unique(ids: np.ndarray) -> np.ndarray:
    """np.unique(ids), by hashing when the ids are Python objects."""
    if ids.dtype != object:
        return np.unique(ids)
    return np.array(sorted(set(ids.tolist())), dtype=object)


def _factorize(ids: np.ndarray) -> np.ndarray:
    """A code per row, equal for equal ids (the frame path's hash lookup, `_codes`, for Python objects)."""
    if ids.dtype != object:
        return np.unique(ids, return_inverse=True)[1].reshape(-1)
    import polars as pl

    return _codes(pl.Series(ids, dtype=pl.String))[0]


def k_core(users: np.ndarray, items: np.ndarray, k_user: int, k_item: int) -> np.ndarray:
    """Iterative k-core: boolean keep-mask such that every kept user and item has >= k rows."""
    if k_user <= 1 and k_item <= 1:
        return np.ones(len(users), dtype=bool)
    return k_core_codes(_factorize(users), _factorize(items), k_user, k_item)


def _sort_key_ids(ids: np.ndarray) -> np.ndarray:
    """Unique ids, numerically sorted when they are all integers (keeps published ids aligned)."""
    uniq = _unique(ids)
    try:
        order = np.argsort(np.array([int(x) for x in uniq]), kind="stable")
        return uniq[order]
    except ValueError:
        return uniq


def _counts(users: np.ndarray, items: np.ndarray, sessions: np.ndarray | None = None) -> dict[str, int]:
    out = {"rows": len(users), "users": len(_unique(users)), "items": len(_unique(items))}
    if sessions is not None:
        out["sessions"] = len(set(zip(users.tolist(), sessions.tolist(), strict=True)))
    return out


def build_sequences(
    inter: Interactions,
    name: str,
    k_user: int = 0,
    k_item: int = 0,
    min_len: int = 1,
    report: list[dict[str, Any]] | None = None,
) -> SeqData:
    """k-core filter, then group by user, stably ordered by time (file order on ties).

    Appends one entry per step to `report` (rows/users/items before and after), when given.
    """
    before = _counts(inter.users, inter.items, inter.sessions) if report is not None else {}
    keep = k_core(inter.users, inter.items, k_user, k_item)
    users, items = inter.users[keep], inter.items[keep]
    ts = inter.timestamps[keep] if inter.timestamps is not None else None
    sess = inter.sessions[keep] if inter.sessions is not None else None
    typ = inter.types[keep] if inter.types is not None else None
    if report is not None and (k_user > 1 or k_item > 1):
        report.append(
            {
                "step": f"{k_user}-core users, {k_item}-core items",
                "before": before,
                "after": _counts(users, items, sess),
            }
        )
    if len(users) == 0:
        raise DatasetError(
            f"{name}: nothing left after the {k_user}/{k_item}-core filter (users and items with at least "
            f"{k_user} resp. {k_item} events); lower --user-core / --item-core"
        )

    user_vocab = _sort_key_ids(users)
    item_vocab = _sort_key_ids(items)
    u_map = {x: i for i, x in enumerate(user_vocab)}
    i_map = {x: i for i, x in enumerate(item_vocab)}
    u_code = np.fromiter((u_map[x] for x in users), np.int64, len(users))
    i_code = np.fromiter((i_map[x] for x in items), np.int64, len(items))

    # Stable lexsort: user first, then time; equal timestamps keep file order. Fractional
    # seconds order events here, then timestamps are stored as whole seconds.
    order = np.lexsort((ts, u_code)) if ts is not None else np.argsort(u_code, kind="stable")
    u_sorted = u_code[order]
    counts = np.bincount(u_sorted, minlength=len(user_vocab))
    offsets = np.zeros(len(user_vocab) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    s_codes, s_ids = None, None
    if sess is not None:
        # A session id names a session of one user: key (user, session), numbered by first appearance.
        keys = np.char.add(np.char.add(users.astype(str), "\x1f"), sess.astype(str))
        uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        rank = np.empty(len(uniq), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
        s_codes = rank[inv][order].astype(np.int32)
        s_ids = [""] * len(uniq)
        for j, k in enumerate(uniq[np.argsort(first, kind="stable")]):
            s_ids[j] = str(k).split("\x1f", 1)[1]
    data = SeqData(
        name=name,
        user_ids=[str(x) for x in user_vocab],
        item_ids=[str(x) for x in item_vocab],
        offsets=offsets,
        items=(i_code[order] + 1).astype(np.int32),
        timestamps=np.floor(ts[order]).astype(np.int64) if ts is not None else None,
        sessions=s_codes,
        session_ids=s_ids,
    )
    if typ is not None:
        data.types, data.type_names = _type_codes(typ[order], inter.type_names)
    return _min_len(data, name, min_len, report)


def _min_len(data: SeqData, name: str, min_len: int, report: list[dict[str, Any]] | None) -> SeqData:
    if min_len > 1:
        n_before = _seq_counts(data)
        # Dropping users can leave items without any event: the catalogue keeps only items with
        # events, or evaluation would rank (and export would serve) items nobody was seen with.
        data = drop_unused_items(drop_short(data, min_len))
        if report is not None:
            report.append({"step": f"users with >= {min_len} events", "before": n_before, "after": _seq_counts(data)})
        if data.num_users == 0:
            raise DatasetError(f"{name}: no user has {min_len} or more events; lower --min-len")
    return data


def _type_codes(names: np.ndarray, declared: tuple[str, ...] | None) -> tuple[np.ndarray, list[str]]:
    """Event type names -> int8 codes into the declared types (else the sorted types that occur)."""
    vocab = list(declared) if declared else sorted({str(x) for x in np.unique(names)})
    if len(vocab) > 127:
        raise DatasetError(f"{len(vocab)} event types; at most 127 are supported (int8 codes)")
    index = {x: i for i, x in enumerate(vocab)}
    return np.fromiter((index[str(x)] for x in names), np.int8, len(names)), vocab


# --------------------------------------------------------------------------- large logs
# The same steps as build_sequences on a polars frame: every row-level step (k-core, id
# mapping, the time sort) stays in polars, and numpy sees only the int arrays at the end.


def _codes(ids: Any) -> tuple[np.ndarray, Any]:
    """Each row's index into the distinct ids (a hash lookup, not a sort), and those ids."""
    import polars as pl

    uniq = ids.unique()
    codes = ids.replace_strict(uniq, pl.int_range(len(uniq), dtype=pl.UInt32, eager=True), return_dtype=pl.UInt32)
    return codes.to_numpy(), uniq


def k_core_codes(u: np.ndarray, i: np.ndarray, k_user: int, k_item: int) -> np.ndarray:
    """`k_core` on integer codes (no sort): the same keep-mask, by counting."""
    keep = np.ones(len(u), dtype=bool)
    if k_user <= 1 and k_item <= 1:
        return keep
    nu, ni = int(u.max()) + 1 if len(u) else 0, int(i.max()) + 1 if len(i) else 0
    while True:
        u_cnt = np.bincount(u[keep], minlength=nu)
        i_cnt = np.bincount(i[keep], minlength=ni)
        new_keep = keep & (u_cnt[u] >= k_user) & (i_cnt[i] >= k_item)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


_DIGITS = r"^[0-9]{1,18}$"  # an int64 without a sign: the fast numeric order


def vocab_order(uniq: Any) -> np.ndarray:
    """Positions that sort distinct ids as `_sort_key_ids` does: numerically when all are
    integers (as Python's int() reads them), else in code point order."""
    import polars as pl

    text = uniq.arg_sort().to_numpy()  # code point order, as numpy sorts Python strings
    if len(text) == 0:
        return text
    try:
        int(uniq[int(text[0])])
    except ValueError:
        return text  # one id that is not an integer decides: text order
    if uniq.str.contains(_DIGITS).all():
        by = pl.DataFrame({"n": uniq.cast(pl.Int64), "s": uniq}).with_row_index("k").sort(["n", "s"])
        return by["k"].to_numpy()
    # Signs, '_' separators, other scripts' digits, longer numbers: as Python's int() reads them.
    as_text = uniq.gather(text).to_numpy().astype(object)
    try:
        by_value = np.argsort(np.array([int(x) for x in as_text]), kind="stable")
    except ValueError:
        return text
    return text[by_value]


def _vocab(codes: np.ndarray, uniq: Any) -> tuple[list[str], np.ndarray]:
    """The ids the kept rows use, in vocabulary order, and each row's index into them."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(uniq)))
    used = uniq.gather(present)
    order = present[vocab_order(used)]
    lut = np.zeros(len(uniq), np.int64)
    lut[order] = np.arange(len(order))
    return uniq.gather(order).to_list(), lut[codes]


def _code_counts(u: np.ndarray, i: np.ndarray, pairs: np.ndarray | None) -> dict[str, int]:
    import polars as pl

    out = {"rows": len(u), "users": _distinct(u), "items": _distinct(i)}
    if pairs is not None:
        out["sessions"] = int(pl.Series(pairs).n_unique())
    return out


@dataclass
class Encoded:
    """A frame's users and items as integer codes into their distinct ids (and (user, session) keys)."""

    uc: np.ndarray
    users: Any  # polars Series of the distinct user ids; uc indexes it
    ic: np.ndarray
    items: Any
    pairs: np.ndarray | None  # one int64 per (user, session), or None without sessions

    def counts(self) -> dict[str, int]:
        """Rows, users, items (and user sessions): the filter report's counts."""
        return _code_counts(self.uc, self.ic, self.pairs)


def encode_frame(frame: Any) -> Encoded:
    uc, users = _codes(frame["user"])
    ic, items = _codes(frame["item"])
    pairs = None
    if "session" in frame.columns:
        sc, _ = _codes(frame["session"])
        pairs = uc.astype(np.int64) * (int(sc.max()) + 1) + sc  # one key per (user, session)
    return Encoded(uc, users, ic, items, pairs)


def build_sequences_frame(
    frame: Any,
    name: str,
    k_user: int = 0,
    k_item: int = 0,
    min_len: int = 1,
    report: list[dict[str, Any]] | None = None,
    type_names: tuple[str, ...] | None = None,
    encoded: Encoded | None = None,
) -> SeqData:
    """`build_sequences` on a polars frame in file order, with columns user and item (strings),
    t (seconds, float) when the log has times, session when it has sessions, type when it has
    event types (`type_names`: the declared ones). The same SeqData, without Python-level loops:
    ids become integer codes by a hash lookup, and every later step counts and sorts integers.
    `encoded`: the frame's codes when the caller has them (encode_frame)."""
    import polars as pl

    enc = encoded or encode_frame(frame)
    uc, users, ic, items, pairs = enc.uc, enc.users, enc.ic, enc.items, enc.pairs
    before = _code_counts(uc, ic, pairs) if report is not None else {}
    keep = k_core_codes(uc, ic, k_user, k_item)
    rows = None if keep.all() else np.flatnonzero(keep)  # kept rows, in file order

    def kept(x: np.ndarray) -> np.ndarray:
        return x if rows is None else x[rows]

    uc, ic = kept(uc), kept(ic)
    pairs = kept(pairs) if pairs is not None else None
    if report is not None and (k_user > 1 or k_item > 1):
        step = f"{k_user}-core users, {k_item}-core items"
        report.append({"step": step, "before": before, "after": _code_counts(uc, ic, pairs)})
    if len(uc) == 0:
        raise DatasetError(
            f"{name}: nothing left after the {k_user}/{k_item}-core filter (users and items with at least "
            f"{k_user} resp. {k_item} events); lower --user-core / --item-core"
        )
    user_ids, u = _vocab(uc, users)
    item_ids, i = _vocab(ic, items)
    check_index_range(len(item_ids), name)
    t = kept(frame["t"].to_numpy()) if "t" in frame.columns else None
    # Stable lexsort: user first, then time; equal timestamps keep file order.
    order = np.lexsort((t, u)) if t is not None else np.argsort(u, kind="stable")
    offsets = np.zeros(len(user_ids) + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(u, minlength=len(user_ids)))
    s_codes, s_ids = None, None
    if pairs is not None:
        # A session id names a session of one user: key (user, session), numbered by first appearance.
        first = pl.DataFrame({"key": pairs}).with_row_index("r").unique("key", keep="first", maintain_order=True)
        s_ids = frame["session"].gather(kept(np.arange(frame.height))[first["r"].to_numpy()]).to_list()
        numbered = pl.DataFrame({"key": pairs}).join(
            first.with_row_index("s").select("key", "s"), on="key", how="left", maintain_order="left"
        )
        s_codes = numbered["s"].to_numpy()[order].astype(np.int32)
    t_codes, t_names = None, None
    if "type" in frame.columns:
        names = frame["type"] if rows is None else frame["type"].gather(rows)
        t_names = list(type_names) if type_names else names.unique().sort().to_list()
        if len(t_names) > 127:
            raise DatasetError(f"{len(t_names)} event types; at most 127 are supported (int8 codes)")
        t_codes = names.replace_strict(t_names, list(range(len(t_names))), return_dtype=pl.Int8).to_numpy()[order]
    data = SeqData(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        offsets=offsets,
        items=(i[order] + 1).astype(np.int32),
        timestamps=np.floor(t[order]).astype(np.int64) if t is not None else None,
        sessions=s_codes,
        session_ids=s_ids,
        types=t_codes,
        type_names=t_names,
    )
    return _min_len(data, name, min_len, report)


INDEX_LIMIT = int(np.iinfo(np.int32).max)  # item indices are int32 (1..num_items)


def check_index_range(num_items: int, name: str) -> None:
    """Refuse a catalogue whose indices would not fit the int32 item arrays."""
    if num_items > INDEX_LIMIT:
        raise DatasetError(
            f"{name}: {num_items:,} distinct items; item indices are 32-bit, so at most {INDEX_LIMIT:,}: "
            f"raise --item-core to drop rare items, or cut the log with --since/--until"
        )


def _distinct(codes: np.ndarray) -> int:
    """How many distinct values a non-negative int array holds (a count, not a sort)."""
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0


def _seq_counts(data: SeqData) -> dict[str, int]:
    out = {"rows": data.num_interactions, "users": data.num_users, "items": _distinct(data.items)}
    if data.sessions is not None:
        out["sessions"] = _distinct(data.sessions)
    return out


def drop_short(data: SeqData, min_len: int) -> SeqData:
    lens = np.diff(data.offsets)
    keep = lens >= min_len
    keep_users = np.flatnonzero(keep)
    if len(keep_users) == len(lens):
        return data
    rows = np.repeat(keep, lens)  # the kept users' events, where they are
    offsets = np.zeros(len(keep_users) + 1, np.int64)
    offsets[1:] = np.cumsum(lens[keep])
    some = len(keep_users) > 0  # with no user left, the optional columns are None (as ever)

    def cut(x: np.ndarray | None, dtype: Any = None) -> np.ndarray | None:
        if x is None or not some:
            return None
        return x[rows].astype(dtype) if dtype else x[rows]

    return replace(
        data,
        user_ids=[data.user_ids[u] for u in keep_users],
        offsets=offsets,
        items=data.items[rows].astype(np.int32),
        timestamps=cut(data.timestamps),
        sessions=cut(data.sessions, np.int32),
        types=cut(data.types, np.int8),
    )


def drop_unused_items(data: SeqData) -> SeqData:
    """The same sequences over a catalogue of only the items that occur, re-indexed in order."""
    used = np.zeros(data.num_items + 1, bool)
    used[data.items] = True
    if used[1:].all():
        return data
    new_index = np.cumsum(used)  # old index -> new index (1-based) for every used item
    return replace(
        data,
        item_ids=[x for x, u in zip(data.item_ids, used[1:], strict=True) if u],
        items=new_index[data.items].astype(np.int32),
    )


@dataclass
class Split:
    """Leave-one-out: train on seq[:-2]; validate seq[:-2] -> seq[-2]; test seq[:-1] -> seq[-1]."""

    train: list[np.ndarray]
    valid_hist: list[np.ndarray]
    valid_target: np.ndarray
    test_hist: list[np.ndarray]
    test_target: np.ndarray
    num_items: int
    # Event times (int64 unix seconds), parallel to train / valid_hist / test_hist element by
    # element; None when the data has no timestamps. A target's own time is never in them.
    train_times: list[np.ndarray] | None = None
    valid_times: list[np.ndarray] | None = None
    test_times: list[np.ndarray] | None = None
    # (len(train[u]),) bool per training sequence: which positions may be targets (event types,
    # training/event_types.py); None: every position is.
    train_targets: list[np.ndarray] | None = None
    # Event types as the model reads them (int64, position in the type names + 1), parallel to
    # train / valid_hist / test_hist element by element; None when the split is untyped.
    train_types: list[np.ndarray] | None = None
    valid_types: list[np.ndarray] | None = None
    test_types: list[np.ndarray] | None = None
    # (len(train[u]),) float32 per training sequence: each position's loss weight as a target
    # (task.type_weights); None: 1.
    train_weights: list[np.ndarray] | None = None

    def subset(self, n: int) -> Split:
        """The first n users (every list cut alike, so times stay aligned)."""

        def cut(x: list[np.ndarray] | None) -> list[np.ndarray] | None:
            return None if x is None else x[:n]

        return Split(
            self.train[:n],
            self.valid_hist[:n],
            self.valid_target[:n],
            self.test_hist[:n],
            self.test_target[:n],
            self.num_items,
            cut(self.train_times),
            cut(self.valid_times),
            cut(self.test_times),
            cut(self.train_targets),
            cut(self.train_types),
            cut(self.valid_types),
            cut(self.test_types),
            cut(self.train_weights),
        )


def leave_one_out(data: SeqData) -> Split:
    train, vh, vt, th, tt = [], [], [], [], []
    timed = data.timestamps is not None
    train_t: list[np.ndarray] = []
    valid_t: list[np.ndarray] = []
    test_t: list[np.ndarray] = []
    for u in range(data.num_users):
        s = data.sequence(u)
        ts = data.times(u) if timed else None
        if len(s) < 3:
            # Too short to hold out two items: all of it is training signal.
            if len(s) >= 2:
                train.append(s)
                if ts is not None:
                    train_t.append(ts)
            continue
        train.append(s[:-2])
        vh.append(s[:-2])
        vt.append(s[-2])
        th.append(s[:-1])
        tt.append(s[-1])
        if ts is not None:
            train_t.append(ts[:-2])
            valid_t.append(ts[:-2])
            test_t.append(ts[:-1])
    return Split(
        train,
        vh,
        np.array(vt, np.int64),
        th,
        np.array(tt, np.int64),
        data.num_items,
        train_t if timed else None,
        valid_t if timed else None,
        test_t if timed else None,
    )


MIN_EVAL_QUERIES = 10


def check_eval_queries(split: Split, minimum: int = MIN_EVAL_QUERIES, name: str = "") -> str:
    """Refuse a split whose validation or test part has fewer than `minimum` queries.

    With a handful of queries every metric is noise, and with none early stopping watches a
    constant 0. Returns the counts as one line for the output.
    """
    counts = (
        f"{len(split.train)} training sequences, {len(split.valid_target)} validation queries, "
        f"{len(split.test_target)} test queries"
    )
    small = [p for p, n in (("validation", len(split.valid_target)), ("test", len(split.test_target))) if n < minimum]
    if small and minimum > 0:
        raise DatasetError(
            f"{name + ': ' if name else ''}{counts}: {' and '.join(small)} below the minimum of {minimum}. "
            f"Keep more data (lower --user-core / --item-core / --min-len when preparing, or use a larger "
            f"--session-test-frac), or pass --min-eval-queries 0 to train anyway"
        )
    return counts


# --------------------------------------------------------------------------- sessions


def split_by_gap(timestamps: np.ndarray, gap_seconds: int = 1800) -> list[slice]:
    """Start a new session wherever two consecutive events are more than `gap_seconds` apart."""
    if len(timestamps) == 0:
        return []
    cuts = np.flatnonzero(np.diff(timestamps) > gap_seconds) + 1
    bounds = [0, *cuts.tolist(), len(timestamps)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def split_at_largest_gap(timestamps: np.ndarray, max_len: int) -> list[slice]:
    """Recursively cut at the largest time gap until every piece has <= max_len events.

    Ties in gap size cut at the gap nearest the middle, so pieces stay balanced.
    """
    if max_len < 1:
        raise ValueError("max_len must be >= 1")
    out: list[slice] = []

    def rec(a: int, b: int) -> None:
        if b - a <= max_len:
            out.append(slice(a, b))
            return
        gaps = np.diff(timestamps[a:b])
        best = gaps.max()
        cands = np.flatnonzero(gaps == best)
        mid = (b - a - 1) / 2
        cut = a + int(cands[np.argmin(np.abs(cands - mid))]) + 1
        rec(a, cut)
        rec(cut, b)

    rec(0, len(timestamps))
    return out


def to_sessions(
    data: SeqData, rule: str = "gap", gap_seconds: int = 1800, max_len: int = 50, min_len: int = 2
) -> SeqData:
    """Cut every user's sequence into sessions; each session becomes a row.

    rule "column": the log's own session column (rows named `user#session`, or `session` when
    the session is the user); "gap": a new session after `gap_seconds` of inactivity;
    otherwise: cut at the largest gaps until no piece is longer than `max_len`. Sessions with
    fewer than `min_len` events are dropped.
    """
    params = {"rule": rule, "gap_seconds": gap_seconds, "max_len": max_len, "min_len": min_len}
    meta = {**data.meta, "sessions": params}
    if rule == "column":
        return _column_sessions(data, min_len, meta)
    if data.timestamps is None:
        hint = (
            " or prepare with --session-col and use --sessions column"
            if data.sessions is None
            else ("; this data has a session column: use --sessions column")
        )
        raise DatasetError(
            f"{data.name}: cutting sessions by time gap needs timestamps; this dataset has none "
            f"(map a time column with --time-col{hint})"
        )
    user_ids: list[str] = []
    pieces: list[np.ndarray] = []
    times: list[np.ndarray] = []
    for u in range(data.num_users):
        ts = data.times(u)
        assert ts is not None
        seq = data.items[data.offsets[u] : data.offsets[u + 1]]
        slices = split_by_gap(ts, gap_seconds) if rule == "gap" else split_at_largest_gap(ts, max_len)
        for k, sl in enumerate(slices):
            if sl.stop - sl.start >= min_len:
                user_ids.append(f"{data.user_ids[u]}#{k}")
                pieces.append(seq[sl])
                times.append(ts[sl])
    if not pieces:
        raise DatasetError(f"{data.name}: no session of {min_len} or more events; lower the minimum or the gap")
    offsets = np.zeros(len(pieces) + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    return SeqData(
        name=f"{data.name}-sessions-{rule}",
        user_ids=user_ids,
        item_ids=data.item_ids,
        offsets=offsets,
        items=np.concatenate(pieces).astype(np.int32),
        timestamps=np.concatenate(times),
        meta=meta,
    )


def _column_sessions(data: SeqData, min_len: int, meta: dict[str, Any]) -> SeqData:
    """Sessions from the session column, numbered (and, without timestamps, ordered) by first appearance."""
    if data.sessions is None or data.session_ids is None:
        raise DatasetError(
            f"{data.name}: no session column; prepare the file with --session-col COLUMN, or cut "
            f"sessions by time with --sessions gap"
        )
    # Each session is one user's: a stable sort by session keeps its events in the user's order.
    order = np.argsort(data.sessions, kind="stable")
    codes = data.sessions[order]
    user_of = np.repeat(np.arange(data.num_users), np.diff(data.offsets))[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    bounds = np.r_[starts, len(codes)]
    lens = np.diff(bounds)
    keep = lens >= min_len
    if not keep.any():
        raise DatasetError(f"{data.name}: no session has {min_len} or more events")
    sel = np.concatenate([order[a:b] for a, b, k in zip(bounds[:-1], bounds[1:], keep, strict=True) if k])
    row_ids = []
    for a, k in zip(starts, keep, strict=True):
        if k:
            user, sid = data.user_ids[int(user_of[a])], data.session_ids[int(codes[a])]
            row_ids.append(sid if user == sid else f"{user}#{sid}")
    offsets = np.zeros(int(keep.sum()) + 1, np.int64)
    offsets[1:] = np.cumsum(lens[keep])
    return SeqData(
        name=f"{data.name}-sessions-column",
        user_ids=row_ids,
        item_ids=data.item_ids,
        offsets=offsets,
        items=data.items[sel].astype(np.int32),
        timestamps=data.timestamps[sel] if data.timestamps is not None else None,
        meta=meta,
    )
