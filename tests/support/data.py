"""A small synthetic dataset for unit tests: no download, no ../shared/data, the same on every machine.

Users walk a ring of items: each next item is a few steps after the previous one (with some
random jumps), so a sequence model has an order to learn, every item is seen, and timestamps
carry session gaps. The shape matches what `training.data.prepare` returns (SeqData: item
indices 1..N, 0 = padding), so anything that trains or exports on real data runs on this too.
"""

from __future__ import annotations

import numpy as np

from training.data import Interactions, SeqData
from training.data.preprocess import build_sequences

SESSION_GAP_S = 3600  # > the 30-minute session gap the session tests use


def synthetic_interactions(
    num_users: int = 300, num_items: int = 120, min_len: int = 6, max_len: int = 40, seed: int = 0
) -> Interactions:
    """Raw events (user, item, timestamp), as a reader returns them."""
    rng = np.random.default_rng(seed)
    users, items, stamps = [], [], []
    for u in range(num_users):
        n = int(rng.integers(min_len, max_len + 1))
        item = int(rng.integers(num_items))
        t = 1_700_000_000 + int(rng.integers(86_400))
        for _ in range(n):
            users.append(f"u{u}")
            items.append(f"i{item}")
            stamps.append(t)
            jump = rng.random() < 0.1
            item = int(rng.integers(num_items)) if jump else (item + int(rng.integers(1, 4))) % num_items
            t += int(rng.integers(30, 600)) + (SESSION_GAP_S if rng.random() < 0.15 else 0)
    return Interactions(
        users=np.array(users, dtype=object), items=np.array(items, dtype=object), timestamps=np.array(stamps)
    )


def synthetic_seqdata(
    num_users: int = 300, num_items: int = 120, min_len: int = 6, max_len: int = 40, seed: int = 0
) -> SeqData:
    """Prepared sequences (the same pipeline as a real dataset: id remap, time order)."""
    return build_sequences(synthetic_interactions(num_users, num_items, min_len, max_len, seed), "synthetic")


def synthetic_item_text(data: SeqData) -> dict[str, str]:
    """A title per item (for bundles exported with item text, and the demo page)."""
    words = ["Star", "River", "Night", "City", "Garden", "Winter", "Harbour"]
    genres = ["Drama", "Comedy", "Thriller", "Documentary", "Animation"]
    titles = {}
    for item in data.item_ids:
        n = int(item[1:])
        titles[item] = f"{words[n % len(words)]} {words[(n // len(words)) % len(words)].lower()} {n} ({genres[n % 5]})"
    return titles
