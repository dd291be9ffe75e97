"""Item clusters of a bundle (clusters.npy, spherical k-means at export): what a per-cluster cap
on a list reads (app/serving/diversity.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.bundles.index import unit_rows
from app.bundles.manifest import BundleError, as_dict


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
        of: np.ndarray = self._of[labels]
        return of

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
