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


def k_core(users: np.ndarray, items: np.ndarray, k_user: int, k_item: int) -> np.ndarray:
    """Iterative k-core: boolean keep-mask such that every kept user and item has >= k rows."""
    keep = np.ones(len(users), dtype=bool)
    if k_user <= 1 and k_item <= 1:
        return keep
    _, u_codes = np.unique(users, return_inverse=True)
    _, i_codes = np.unique(items, return_inverse=True)
    while True:
        u_cnt = np.bincount(u_codes[keep], minlength=u_codes.max() + 1)
        i_cnt = np.bincount(i_codes[keep], minlength=i_codes.max() + 1)
        new_keep = keep & (u_cnt[u_codes] >= k_user) & (i_cnt[i_codes] >= k_item)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def _sort_key_ids(ids: np.ndarray) -> np.ndarray:
    """Unique ids, numerically sorted when they are all integers (keeps published ids aligned)."""
    uniq = np.unique(ids)
    try:
        order = np.argsort(np.array([int(x) for x in uniq]), kind="stable")
        return uniq[order]
    except ValueError:
        return uniq


def _counts(users: np.ndarray, items: np.ndarray, sessions: np.ndarray | None = None) -> dict[str, int]:
    out = {"rows": len(users), "users": len(np.unique(users)), "items": len(np.unique(items))}
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


def _seq_counts(data: SeqData) -> dict[str, int]:
    out = {"rows": data.num_interactions, "users": data.num_users, "items": len(np.unique(data.items))}
    if data.sessions is not None:
        out["sessions"] = len(np.unique(data.sessions))
    return out


def drop_short(data: SeqData, min_len: int) -> SeqData:
    lens = np.diff(data.offsets)
    keep_users = np.flatnonzero(lens >= min_len)
    if len(keep_users) == len(lens):
        return data
    seqs = [data.items[data.offsets[u] : data.offsets[u + 1]] for u in keep_users]
    tss = [data.times(u) for u in keep_users] if data.timestamps is not None else None
    sess = (
        [data.sessions[data.offsets[u] : data.offsets[u + 1]] for u in keep_users]
        if data.sessions is not None
        else None
    )
    offsets = np.zeros(len(keep_users) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    return replace(
        data,
        user_ids=[data.user_ids[u] for u in keep_users],
        offsets=offsets,
        items=np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32),
        timestamps=np.concatenate(tss) if tss else None,  # type: ignore[arg-type]
        sessions=np.concatenate(sess).astype(np.int32) if sess else None,
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
