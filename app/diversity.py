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
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import HTTPException, Query

from app.manifest import BundleError
from app.similar import OUTPUT_SPACE, as_dict, unit_rows

if TYPE_CHECKING:
    from app.bundle import Bundle

POOL_MIN, POOL_PER_K = 100, 10
CAP_POOL_MIN, CAP_POOL_PER_K = 500, 50


class Clusters:
    """Cluster id of every item (row 0 = padding, -1); items added online join the nearest centroid."""

    def __init__(self, assign: np.ndarray, unit: np.ndarray) -> None:
        self.count = int(assign.max()) + 1
        self._of = np.concatenate([[-1], assign]).astype(np.int64)
        # Centroid = normalised mean of its members' unit vectors (spherical k-means' own update).
        sums = np.zeros((self.count, unit.shape[1]), np.float32)
        np.add.at(sums, assign, unit)
        self.centroids = unit_rows(sums)

    def of(self, labels: np.ndarray) -> np.ndarray:
        return self._of[labels]

    def add(self, unit: np.ndarray) -> None:
        self._of = np.concatenate([self._of, np.argmax(unit @ self.centroids.T, axis=1)])


def load_clusters(path: Path, meta: Any, files: dict[str, str], unit: np.ndarray) -> Clusters | None:
    """clusters.npy as the manifest's `clusters` section names it; None for bundles without one."""
    meta = as_dict(meta)
    if meta is None:
        return None
    if not isinstance(meta, dict) or meta.get("file") not in files:
        raise BundleError("manifest clusters must name a file that has a checksum in the manifest")
    assign = np.load(path / meta["file"], allow_pickle=False)
    if assign.shape != (len(unit),) or assign.dtype.kind not in "iu" or (len(assign) and assign.min() < 0):
        raise BundleError(f"{meta['file']} is {assign.dtype}{assign.shape}, expected ({len(unit)},) ids >= 0")
    return Clusters(assign.astype(np.int64), unit)


@dataclass(frozen=True)
class ListShape:
    """The re-ranking a request asked for (both None: the plain top-k)."""

    diversify: float | None = None
    max_per_cluster: int | None = None

    @property
    def active(self) -> bool:
        return self.diversify is not None or self.max_per_cluster is not None

    def pool(self, bundle: Bundle, k: int) -> int:
        """How many candidates to fetch for a list of k; 422 when the bundle cannot honour the request."""
        if self.max_per_cluster is not None and bundle.clusters is None:
            raise HTTPException(
                422, f"max_per_cluster: bundle {bundle.name!r} has no item clusters (export it again to add them)"
            )
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


DiversifyQuery = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="MMR re-ranking: λ in [0, 1] trades model score (1 = none) against similarity to the items "
        "already listed (cosine of item vectors). See docs/explanations.md.",
    ),
]
MaxPerClusterQuery = Annotated[
    int | None,
    Query(ge=1, le=1000, description="At most this many items from one item cluster (bundles exported with clusters)."),
]


async def list_shape(
    diversify: DiversifyQuery = None,
    max_per_cluster: MaxPerClusterQuery = None,
) -> ListShape:
    # async: FastAPI runs sync dependencies in a thread pool, a costly hop per request.
    return ListShape(diversify, max_per_cluster)
