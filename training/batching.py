"""Padding and batching helpers shared by training, evaluation and export."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_left(seqs: Sequence[np.ndarray], length: int | None = None, pad: int = 0) -> np.ndarray:
    """(B, L) int64, each row right-aligned (newest item last), left-filled with `pad`.

    Left padding keeps the newest item at the last position for every row, which is where
    every model reads the user vector from.
    """
    length = length if length is not None else max((len(s) for s in seqs), default=1)
    length = max(length, 1)
    out = np.full((len(seqs), length), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[i, length - len(s) :] = s
    return out
