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

from app.bundles.index import TopKIndex, build_index
from app.bundles.manifest import BundleError

OUTPUT_SPACE = "output"


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
    return unit


class ItemSpace:
    """Unit item vectors for labels 1..n (model item indices) in a top-k index; grows online."""

    def __init__(self, name: str, vectors: np.ndarray, ann_threshold: int) -> None:
        self.name = name
        unit = unit_rows(vectors)
        self.dim = int(unit.shape[1])
        self.index: TopKIndex = build_index(np.arange(1, len(unit) + 1, dtype=np.int64), unit, ann_threshold)
        # The exact index already holds the table; faiss indexes get a copy for lookups,
        # over-allocated so online adds are amortised O(1) per item.
        self._own: np.ndarray | None = None
        if not hasattr(self.index, "table"):
            self._own = np.zeros((max(16, 2 * len(unit)), self.dim), np.float32)
            self._own[: len(unit)] = unit

    def __len__(self) -> int:
        return len(self.index)

    def has(self, label: int) -> bool:
        return 1 <= label <= len(self)

    def unit(self, labels: np.ndarray) -> np.ndarray:
        """(m,) labels -> (m, dim) unit vectors."""
        table = self.index.table if self._own is None else self._own[: len(self)]  # type: ignore[attr-defined]  # exact index: has its table
        return table[np.asarray(labels, dtype=np.int64) - 1]

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        unit = unit_rows(vectors)
        start = len(self)
        self.index.add(labels, unit)
        if self._own is not None:
            if len(self) > len(self._own):
                grown = np.zeros((2 * len(self), self.dim), np.float32)
                grown[:start] = self._own[:start]
                self._own = grown
            self._own[start : len(self)] = unit

    def neighbours(self, label: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most cosine-similar items to `label`, best first, the item itself excluded."""
        query = self.unit(np.array([label]))
        labels, scores = self.index.search(query, k, [np.array([label], dtype=np.int64)])
        ok = labels[0] > 0
        return labels[0][ok], scores[0][ok]


def as_dict(section: Any) -> Any:
    """A manifest section as plain JSON data (a pydantic section or already a dict)."""
    return section.model_dump() if hasattr(section, "model_dump") else section


def load_spaces(
    path: Path, declared: Any, files: dict[str, str], table: np.ndarray, ann_threshold: int
) -> dict[str, ItemSpace]:
    """The `output` space from the item table, plus every space the manifest's `item_spaces` declares."""
    spaces = {OUTPUT_SPACE: ItemSpace(OUTPUT_SPACE, table, ann_threshold)}
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
        vecs = np.load(path / meta["file"], allow_pickle=False)
        want = (len(table), int(meta.get("dim", vecs.shape[-1])))
        if vecs.dtype != np.float32 or vecs.shape != want or not np.isfinite(vecs).all():
            raise BundleError(f"item space {name!r}: {meta['file']} is {vecs.dtype}{vecs.shape}, expected {want}")
        spaces[name] = ItemSpace(name, vecs, ann_threshold)
    return spaces
