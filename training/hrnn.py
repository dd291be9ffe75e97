"""HRNN training (padded user sequences with their times) and the session-aware split.

Session-aware protocol (Quadrana et al. 2017, Sec. 4.1, on a per-user time-gap cut): every user's
timeline is cut into sessions with `split_by_gap` (a new session after more than `gap_seconds`
without an event). For a user with at least three sessions the last one is the test session and
the one before it the validation session; every event after the first of such a session is one
query, whose history is everything the user did before it (all earlier sessions and the earlier
events of that session), with its event times. The user's training sequence is everything before
the validation session. Users with fewer than three sessions are training data only. Ranked
against the full catalogue, seen items not excluded (the session literature's protocol).

`history="session"` gives the same queries (same order, same targets) with histories cut to the
current session and the training sessions as separate rows: the split a session-only model
(GRU4Rec restarted every session) trains and is evaluated on, so the two are one comparison.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from models.hrnn import HRNN
from training import losses
from training.batching import pad_left
from training.data.preprocess import SeqData, Split, split_by_gap
from training.data.readers import DatasetError
from training.tasks import Batch, Task, batch_order, draw_window

HISTORIES = ("user", "session")
PROTOCOL = "user-sessions"


@dataclass
class _Queries:
    hists: list[np.ndarray]
    times: list[np.ndarray]
    targets: list[int]

    def add_session(self, seq: np.ndarray, ts: np.ndarray, start: int, stop: int, history: str) -> None:
        """One query per event after the first of seq[start:stop]; history from 0 (user) or start (session)."""
        for t in range(start + 1, stop):
            a = 0 if history == "user" else start
            self.hists.append(seq[a:t])
            self.times.append(ts[a:t])
            self.targets.append(int(seq[t]))


def user_session_split(data: SeqData, gap_seconds: int = 1800, history: str = "user") -> Split:
    """The session-aware split described in the module docstring (needs timestamps)."""
    if history not in HISTORIES:
        raise ValueError(f"history must be one of {', '.join(HISTORIES)}, got {history!r}")
    if data.timestamps is None:
        raise DatasetError(
            f"{data.name}: the session-aware split cuts sessions by time gap and needs timestamps; "
            f"this dataset has none"
        )
    train: list[np.ndarray] = []
    train_times: list[np.ndarray] = []
    valid, test = _Queries([], [], []), _Queries([], [], [])
    for u in range(data.num_users):
        seq, ts = data.sequence(u), data.times(u)
        assert ts is not None
        sessions = split_by_gap(ts, gap_seconds)
        held_out = len(sessions) >= 3
        cut = sessions[-2].start if held_out else len(seq)  # training = everything before validation
        if history == "user":
            if cut >= 2:
                train.append(seq[:cut])
                train_times.append(ts[:cut])
        else:
            for sl in sessions:
                if sl.stop <= cut and sl.stop - sl.start >= 2:
                    train.append(seq[sl])
                    train_times.append(ts[sl])
        if held_out:
            valid.add_session(seq, ts, sessions[-2].start, sessions[-2].stop, history)
            test.add_session(seq, ts, sessions[-1].start, sessions[-1].stop, history)
    return Split(
        train,
        valid.hists,
        np.array(valid.targets, np.int64),
        test.hists,
        np.array(test.targets, np.int64),
        data.num_items,
        train_times=train_times,
        valid_times=valid.times,
        test_times=test.times,
    )


def user_session_protocol(data: SeqData, gap_seconds: int = 1800, history: str = "user") -> tuple[SeqData, Split]:
    """The data (its `meta` records the protocol, so `seqrec evaluate` rebuilds the split) and the split."""
    split = user_session_split(data, gap_seconds, history)
    meta = {**data.meta, "split": {"protocol": PROTOCOL, "gap_seconds": gap_seconds, "history": history}}
    return replace(data, meta=meta), split


@dataclass
class HRNNTask(Task):
    """Next item at every position of a user's sequence, with its event times.

    One row per user (shuffled; length-bucketed with `bucket`): a window of at most max_len + 1
    events (the newest with probability `newest_prob`, else one ending earlier), input
    seq[:-1] and times[:-1], target seq[1:]; full back-propagation through the window and its
    sessions. Every next item is a target, the first item of a session too (predicted from the
    previous session's last state). Loss: softmax cross-entropy over the whole catalogue.
    """

    max_len: int = 200
    bucket: bool = False
    newest_prob: float = 1.0

    def batches(  # type: ignore[override]
        self,
        train: Sequence[np.ndarray],
        batch_size: int,
        rng: np.random.Generator,
        device: torch.device,
        times: Sequence[np.ndarray] | None = None,
    ) -> Iterator[Batch]:
        if times is None:
            raise ValueError("hrnn: the training sequences need their event times (times=)")
        rows = [i for i, s in enumerate(train) if len(s) >= 2]
        lengths = np.array([min(len(train[i]), self.max_len + 1) for i in rows])
        for idx in batch_order(lengths, batch_size, rng, self.bucket):
            items, stamps = [], []
            for i in idx:
                r = rows[i]
                # Draw the window on positions, so items and times are cut alike.
                pos = draw_window(np.arange(len(train[r])), self.max_len + 1, self.newest_prob, rng)
                items.append(train[r][pos])
                stamps.append(np.asarray(times[r])[pos])
            yield {
                "item_seq": torch.as_tensor(pad_left([s[:-1] for s in items]), device=device),  # (B, L)
                "time_seq": torch.as_tensor(pad_left([t[:-1] for t in stamps]), device=device),  # (B, L)
                "target": torch.as_tensor(pad_left([s[1:] for s in items]), device=device),  # (B, L)
            }

    def loss(self, model: HRNN, batch: Batch) -> torch.Tensor:  # type: ignore[override]
        h = model.hidden(batch["item_seq"], batch["time_seq"])  # (B, L, H)
        mask = batch["target"] != 0  # (B, L)
        return losses.full_softmax_ce(model.user_vector(h[mask]), batch["target"][mask], model.item_vectors())
