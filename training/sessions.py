"""Next-item-in-session evaluation split (the GRU4Rec papers' protocol).

Sessions (training/data/preprocess.py: to_sessions) are ordered by start time (without
timestamps: by first appearance in the file, the order to_sessions gives them); the newest
`test_frac` of them are test sessions, the `valid_frac` before those validation sessions, the
rest training sessions. As in the papers, items of validation/test sessions that never occur in
training are removed, and sessions left with fewer than 2 events are dropped. Every event after
the first of an evaluation session is one query: history = the session so far, target = that
event; ranked against the full catalogue (Recall@20 = hr@20, MRR@20).
"""

from __future__ import annotations

import numpy as np

from training.data.preprocess import SeqData, Split


def _queries(sessions: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    hists: list[np.ndarray] = []
    targets: list[int] = []
    for s in sessions:
        for t in range(1, len(s)):
            hists.append(s[:t])
            targets.append(int(s[t]))
    return hists, np.array(targets, np.int64)


def _query_times(times: list[np.ndarray]) -> list[np.ndarray]:
    """The times of each query's history, in _queries' order (the target's own time left out)."""
    return [ts[:t] for ts in times for t in range(1, len(ts))]


def session_split(sessions: SeqData, test_frac: float = 0.1, valid_frac: float = 0.1) -> Split:
    if not (0 < test_frac < 1 and 0 <= valid_frac < 1 and test_frac + valid_frac < 1):
        raise ValueError("need 0 < test_frac, 0 <= valid_frac and test_frac + valid_frac < 1")
    n = sessions.num_users
    if sessions.timestamps is not None:
        starts = sessions.timestamps[sessions.offsets[:-1]]  # (S,) start time of each session
        order = np.argsort(starts, kind="stable")
    else:
        order = np.arange(n)
    n_test = max(1, round(test_frac * n))
    n_valid = round(valid_frac * n)
    train_idx = order[: n - n_test - n_valid]
    valid_idx = order[n - n_test - n_valid : n - n_test]
    test_idx = order[n - n_test :]
    train = [sessions.sequence(int(u)) for u in train_idx]
    timed = sessions.timestamps is not None
    train_t = [sessions.times(int(u)) for u in train_idx] if timed else None
    known = np.zeros(sessions.num_items + 1, dtype=bool)
    if train:
        known[np.concatenate(train)] = True

    def keep(idx: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        out, times = [], []
        for u in idx:
            s = sessions.sequence(int(u))
            ok = known[s]  # items unseen in training cannot be scored meaningfully
            if ok.sum() >= 2:
                out.append(s[ok])
                if timed:
                    times.append(sessions.times(int(u))[ok])  # type: ignore[index]
        return out, times

    valid_s, valid_ts = keep(valid_idx)
    test_s, test_ts = keep(test_idx)
    vh, vt = _queries(valid_s)
    th, tt = _queries(test_s)
    return Split(
        train,
        vh,
        vt,
        th,
        tt,
        sessions.num_items,
        train_t,
        _query_times(valid_ts) if timed else None,
        _query_times(test_ts) if timed else None,
    )


def session_protocol(
    data: SeqData, rule: str, gap_seconds: int = 1800, test_frac: float = 0.1, valid_frac: float | None = None
) -> tuple[SeqData, Split]:
    """The data cut into sessions and its next-item-in-session split, with both recorded in
    `meta` so that a checkpoint trained on it can rebuild the same split (`seqrec evaluate`).

    rule: column (the log's session column), gap, or largest-gap (CLI names).
    """
    from training.data.preprocess import to_sessions

    valid_frac = test_frac if valid_frac is None else valid_frac
    sessions = to_sessions(data, {"largest-gap": "largest"}.get(rule, rule), gap_seconds=gap_seconds)
    sessions.meta["split"] = {"protocol": "sessions", "rule": rule, "test_frac": test_frac, "valid_frac": valid_frac}
    return sessions, session_split(sessions, test_frac=test_frac, valid_frac=valid_frac)
