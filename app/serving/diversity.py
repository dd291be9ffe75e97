"""Diversified recommendation lists: MMR re-ranking and a per-cluster cap, both deterministic.

GET /recommend takes two optional parameters (docs/explanations.md):
  diversify=λ        maximal marginal relevance (Carbonell & Goldstein, 1998) with λ in [0, 1]:
                     repeatedly pick the candidate maximising λ·rel(i) - (1-λ)·max_{j picked} cos(i, j),
                     rel = the model score min-max scaled to [0, 1] over the candidate pool, cos on
                     the unit item vectors. λ = 1 is the undiversified list.
  max_per_cluster=n  at most n items from one item cluster (clusters.npy, k-means at export).
Both: MMR order, skipping items whose cluster is full. Candidates are the top max(100, 10·k)
items by model score (popularity for users without history), max(500, 50·k) with a cluster cap
(a cap skips many); the list is shorter than k only when the cap cannot be met inside that
pool. Ties go to the higher-ranked candidate, so the same request always gets the same list.
Scores in the answer stay the model's scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.bundles.spaces import OUTPUT_SPACE
from app.serving.errors import Refused

if TYPE_CHECKING:
    from app.bundles.bundle import Bundle

POOL_MIN, POOL_PER_K = 100, 10
CAP_POOL_MIN, CAP_POOL_PER_K = 500, 50


@dataclass(frozen=True)
class ListShape:
    """The re-ranking a request asked for (both None: the plain top-k)."""

    diversify: float | None = None
    max_per_cluster: int | None = None

    @property
    def active(self) -> bool:
        return self.diversify is not None or self.max_per_cluster is not None

    def pool(self, bundle: Bundle, k: int) -> int:
        """How many candidates to fetch for a list of k; Refused when the bundle cannot honour the request."""
        if self.max_per_cluster is not None and bundle.clusters is None:
            raise Refused(f"max_per_cluster: bundle {bundle.name!r} has no item clusters (export it again to add them)")
        if self.max_per_cluster is not None:
            return max(CAP_POOL_MIN, CAP_POOL_PER_K * k)
        return max(POOL_MIN, POOL_PER_K * k) if self.active else k

    def rerank(self, bundle: Bundle, labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (best first) -> the k-item list this shape asks for."""
        if not self.active:
            return labels[:k], scores[:k]
        pick = rerank(
            scores,
            bundle.spaces[OUTPUT_SPACE].unit(labels) if self.diversify is not None else None,
            bundle.clusters.of(labels) if self.max_per_cluster is not None and bundle.clusters else None,
            k,
            1.0 if self.diversify is None else self.diversify,
            self.max_per_cluster,
        )
        return labels[pick], scores[pick]


def rerank(
    scores: np.ndarray,
    unit: np.ndarray | None,
    clusters: np.ndarray | None,
    k: int,
    lam: float,
    cap: int | None,
) -> np.ndarray:
    """Positions (into the candidate arrays, best-scored first) of the re-ranked list.

    scores (C,) model scores; unit (C, D) unit vectors (None: no MMR term); clusters (C,) ids
    (None: no cap). Greedy, O(k·C) once the (C, C) similarities are known.
    """
    c = len(scores)
    rel = np.zeros(c, np.float64)
    finite = np.isfinite(scores)
    if finite.any():
        lo, hi = scores[finite].min(), scores[finite].max()
        rel[finite] = (scores[finite] - lo) / (hi - lo) if hi > lo else 1.0
    closest = np.zeros(c)  # max cosine to the items picked so far (0 before the first pick)
    sims = unit.astype(np.float64) @ unit.T.astype(np.float64) if unit is not None else None
    free = finite.copy()
    used: dict[int, int] = {}
    out: list[int] = []
    while len(out) < k:
        value = lam * rel - (1.0 - lam) * closest if sims is not None else rel.copy()
        value[~free] = -np.inf
        if cap is not None and clusters is not None:
            full = [g for g, n in used.items() if n >= cap]
            value[np.isin(clusters, full)] = -np.inf
        best = int(np.argmax(value))  # first maximum: the higher-ranked candidate wins ties
        if not np.isfinite(value[best]):
            break
        out.append(best)
        free[best] = False
        if clusters is not None:
            used[int(clusters[best])] = used.get(int(clusters[best]), 0) + 1
        if sims is not None:
            closest = sims[best].copy() if len(out) == 1 else np.maximum(closest, sims[best])
    return np.array(out, dtype=np.int64)
