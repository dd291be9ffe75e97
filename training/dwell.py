"""Dwell-time repetition for GRU4Rec training (Bogina & Kuflik, 2017; written from the paper).

An event's dwell is the gap to the next event of the same session, capped; the event is read
floor(dwell / unit) + 1 times (app/bundles/history.py: `dwell_counts`, `dwell_repeat`, the one
definition that training, offline evaluation and the service share).

Training keeps the prediction problem of serving exactly. At serving time the newest event of a
history has no next event yet, so it is read once; only earlier events are repeated. In one GRU
pass over the expanded training sequence, the state right after the first copy of event i has
read events 0..i-1 with their repeats and event i once: the live history that ends at event i.
So the target of event i+1 sits at the first copy of event i, and the other copies carry no
target (0, masked): the repeats change what the model reads, never what it is scored on, and a
repeated item is never a target.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from app.bundles.history import dwell_counts
from training.batching import pad_left
from training.tasks import Batch, batch_order, draw_window


def dwell_spec(unit_s: int, cap_s: int, session_gap_s: int) -> dict[str, Any] | None:
    """The manifest's history transform for these options, or None when dwell is off (unit 0)."""
    if unit_s <= 0:
        return None
    if cap_s < 0 or session_gap_s < 0:
        raise ValueError(f"dwell: cap_s and session_gap_s must be >= 0, got {cap_s} and {session_gap_s}")
    return {"kind": "dwell_repeat", "unit_s": int(unit_s), "cap_s": int(cap_s), "session_gap_s": int(session_gap_s)}


def training_pair(spec: dict[str, Any], items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One training sequence (n >= 2 events) -> (inputs (M,), targets (M,)), 0 = no target.

    inputs: events 0..n-2, each repeated by its dwell, except that event n-2 is read once (its
    copies would precede no target). targets: event i+1 at the first copy of event i.
    """
    if len(items) != len(times):
        raise ValueError(f"sequence has {len(items)} items but {len(times)} times")
    counts = dwell_counts(times, int(spec["unit_s"]), int(spec["cap_s"]), int(spec["session_gap_s"]))[:-1]
    counts[-1] = 1
    inputs = np.repeat(np.asarray(items[:-1], dtype=np.int64), counts)  # (M,)
    targets = np.zeros_like(inputs)
    targets[np.cumsum(counts) - counts] = items[1:]  # first copy of event i -> event i+1
    return inputs, targets


def dwell_batches(
    spec: dict[str, Any],
    train: Sequence[np.ndarray],
    times: Sequence[np.ndarray] | None,
    batch_size: int,
    rng: np.random.Generator,
    device: torch.device | str,
    max_len: int,
    bucket: bool = False,
    newest_prob: float = 1.0,
) -> Iterator[Batch]:
    """Like training.tasks.shifted_batches, over the expanded pairs: one row per user, the newest
    `max_len` expanded positions (cut after the expansion, as evaluation and serving cut the
    expanded history), left-padded: {"item_seq": (B, L), "target": (B, L)}."""
    if times is None or len(times) != len(train):
        raise ValueError("dwell repetition needs the training sequences' event times (times=)")
    pairs = [training_pair(spec, s, t) for s, t in zip(train, times, strict=True) if len(s) >= 2]
    lengths = np.array([min(len(p[0]), max_len) for p in pairs])
    for idx in batch_order(lengths, batch_size, rng, bucket):
        windows = [draw_window(np.arange(len(pairs[i][0])), max_len, newest_prob, rng) for i in idx]
        yield {
            "item_seq": torch.as_tensor(
                pad_left([pairs[i][0][w] for i, w in zip(idx, windows, strict=True)]), device=device
            ),
            "target": torch.as_tensor(
                pad_left([pairs[i][1][w] for i, w in zip(idx, windows, strict=True)]), device=device
            ),
        }
