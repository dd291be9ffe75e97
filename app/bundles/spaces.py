"""Item-to-item similarity: cosine neighbours in one or more vector spaces of a bundle.

Every bundle has the `output` space: its item vectors (item_vectors.npy, plus items registered
online from text). A manifest may declare more under `item_spaces` (name -> {file, dim}),
e.g. BERT4Rec's concatenated last-four-layer hidden states; those cover the exported catalogue
only. Similarity is cosine: vectors are L2-normalised once and searched by inner product with
the same TopKIndex the recommendations use (exact below the ANN threshold, HNSW / IVF above).
Cosine rather than the raw dot product because the dot product of item vectors mostly measures
their norms, i.e. popularity (benchmarks/results/similar_genres.md compares the two).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.bundles.index import IVF_MIN_ITEMS, RowTable, TopKIndex, build_index, mapped_array, unit_rows
from app.bundles.manifest import BundleError, as_dict

OUTPUT_SPACE = "output"


class ItemSpace:
    """Unit item vectors for labels 1..n (model item indices) in a top-k index; grows online."""

    def __init__(self, name: str, vectors: np.ndarray, ann_threshold: int, cache: Path | None = None) -> None:
        """`cache`: a folder of the index cache (app/bundles/index.py) for a large catalogue: the
        unit vectors and the index are computed once per machine and mapped by every worker."""
        self.name = name
        labels = np.arange(1, len(vectors) + 1, dtype=np.int64)
        if cache is not None and len(vectors) >= max(ann_threshold, IVF_MIN_ITEMS):
            unit = mapped_array(cache / f"space-{name}-unit.npy", lambda: unit_rows(vectors))
            self.index: TopKIndex = build_index(labels, unit, ann_threshold, cache=cache / f"space-{name}-ivf.faiss")
        else:
            unit = unit_rows(vectors)
            self.index = build_index(labels, unit, ann_threshold)
        self.dim = int(unit.shape[1])
        self._rows = RowTable(unit)  # lookups by label; items added online go to its buffer

    def __len__(self) -> int:
        return len(self.index)

    def has(self, label: int) -> bool:
        return 1 <= label <= len(self)

    @property
    def table(self) -> np.ndarray:
        """The exported items' unit vectors, row r - 1 = label r (a memory map when cached)."""
        return self._rows.base

    def unit(self, labels: np.ndarray) -> np.ndarray:
        """(m,) labels -> (m, dim) unit vectors."""
        return self._rows.take(labels)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        unit = unit_rows(vectors)
        self.index.add(labels, unit)
        self._rows.append(unit)

    def neighbours(self, label: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most cosine-similar items to `label`, best first, the item itself excluded."""
        query = self.unit(np.array([label]))
        labels, scores = self.index.search(query, k, [np.array([label], dtype=np.int64)])
        ok = labels[0] > 0
        return labels[0][ok], scores[0][ok]


def load_spaces(
    path: Path, declared: Any, files: dict[str, str], table: np.ndarray, ann_threshold: int, cache: Path | None = None
) -> dict[str, ItemSpace]:
    """The `output` space from the item table, plus every space the manifest's `item_spaces` declares."""
    spaces = {OUTPUT_SPACE: ItemSpace(OUTPUT_SPACE, table, ann_threshold, cache)}
    declared = declared or {}
    if isinstance(declared, dict):
        declared = {name: as_dict(meta) for name, meta in declared.items()}
    if not isinstance(declared, dict):
        raise BundleError("manifest item_spaces must be an object (name -> {file, dim})")
    for name, meta in declared.items():
        if name == OUTPUT_SPACE or not isinstance(meta, dict) or "file" not in meta:
            raise BundleError(f"manifest item_spaces.{name} must name a file (and not be {OUTPUT_SPACE!r})")
        if meta["file"] not in files:
            raise BundleError(f"item space {name!r}: {meta['file']} has no checksum in the manifest")
        vecs = np.load(path / meta["file"], mmap_mode="r", allow_pickle=False)
        want = (len(table), int(meta.get("dim", vecs.shape[-1])))
        if vecs.dtype != np.float32 or vecs.shape != want or not np.isfinite(vecs).all():
            raise BundleError(f"item space {name!r}: {meta['file']} is {vecs.dtype}{vecs.shape}, expected {want}")
        spaces[name] = ItemSpace(name, vecs, ann_threshold, cache)
    return spaces
