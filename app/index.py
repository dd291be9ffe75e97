"""Top-k maximum inner product search behind one interface.

`ExactIndex` (numpy/BLAS) is exact and, for catalogues up to ~1e5 items at these
dimensions, also fastest. `HNSWIndex` (hnswlib, chosen by measurement: see
benchmarks/results/ann.md) takes over above `ann_threshold`. Both take `add`, because
items arrive online (cold-start items registered from text). Labels are model item
indices (1..N); 0 is padding and never returned.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

NEG_INF = np.float32(-np.inf)


class TopKIndex(Protocol):
    dim: int

    def __len__(self) -> int: ...

    def search(
        self, query: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """query (B, D) -> (labels (B, k'), scores (B, k')), best first, excluded labels dropped.

        k' = min(k, catalogue size minus the excluded items) when that is the same for every row;
        rows with fewer candidates are padded with label 0 / score -inf.
        """
        ...

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None: ...


def _exclude_count(exclude: list[np.ndarray] | None, b: int) -> list[int]:
    return [len(np.unique(e)) for e in exclude] if exclude is not None else [0] * b


class ExactIndex:
    """Brute-force inner product: one GEMV/GEMM + argpartition. Labels are consecutive from `first`."""

    def __init__(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) and not np.array_equal(labels, np.arange(labels[0], labels[0] + len(labels))):
            raise ValueError("ExactIndex labels must be consecutive integers")
        self.first = int(labels[0]) if len(labels) else 1
        self.dim = int(vectors.shape[1])
        self._n = len(labels)
        # Over-allocated buffer so online `add` is amortised O(1) per item, not a full copy.
        self._buf = np.empty((max(16, self._n), self.dim), dtype=np.float32)
        self._buf[: self._n] = vectors

    def __len__(self) -> int:
        return self._n

    @property
    def table(self) -> np.ndarray:
        return self._buf[: self._n]

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        want = np.arange(self.first + self._n, self.first + self._n + len(labels))
        if not np.array_equal(labels, want):
            raise ValueError(f"ExactIndex.add expects labels {want[:1]}.. (consecutive)")
        need = self._n + len(labels)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf)), self.dim), dtype=np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = vectors
        self._n = need

    def search(
        self, query: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        query = np.asarray(query, dtype=np.float32).reshape(-1, self.dim)
        scores = query @ self.table.T  # (B, N)
        if exclude is not None:
            for row, ex in zip(scores, exclude, strict=True):
                rows = ex - self.first
                row[rows[(rows >= 0) & (rows < self._n)]] = NEG_INF
        k = min(k, self._n)
        if k <= 0:
            return np.zeros((len(query), 0), np.int64), np.zeros((len(query), 0), np.float32)
        if k < self._n:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(self._n), (len(query), self._n))
        top = np.take_along_axis(scores, part, 1)
        order = np.argsort(-top, axis=1, kind="stable")
        rows = np.take_along_axis(part, order, 1)
        top = np.take_along_axis(top, order, 1)
        labels = rows.astype(np.int64) + self.first
        labels[~np.isfinite(top)] = 0  # excluded items never come back
        return _trim(labels, top, k, _exclude_count(exclude, len(query)), self._n)


def _trim(labels: np.ndarray, scores: np.ndarray, k: int, n_ex: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop trailing columns that are padding in every row (k larger than what is left)."""
    keep = min(k, max(n - e for e in n_ex)) if n_ex else k
    return labels[:, :keep], scores[:, :keep]


class HNSWIndex:
    """Approximate inner-product search (hnswlib HNSW graph), single-threaded."""

    def __init__(
        self, labels: np.ndarray, vectors: np.ndarray, m: int = 16, ef_construction: int = 200, ef_search: int = 128
    ) -> None:
        import hnswlib

        self.dim = int(vectors.shape[1])
        self.ef_search = ef_search
        self._index = hnswlib.Index(space="ip", dim=self.dim)
        self._index.init_index(
            max_elements=max(16, len(labels)), M=m, ef_construction=ef_construction, allow_replace_deleted=False
        )
        self._index.set_num_threads(1)
        self._index.add_items(np.asarray(vectors, dtype=np.float32), np.asarray(labels, dtype=np.int64))
        self._index.set_ef(ef_search)

    def __len__(self) -> int:
        return self._index.get_current_count()

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        need = len(self) + len(labels)
        if need > self._index.get_max_elements():
            self._index.resize_index(max(need, 2 * self._index.get_max_elements()))
        self._index.add_items(np.asarray(vectors, dtype=np.float32), np.asarray(labels, dtype=np.int64))

    def search(
        self, query: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        query = np.asarray(query, dtype=np.float32).reshape(-1, self.dim)
        n = len(self)
        n_ex = _exclude_count(exclude, len(query))
        # Ask for enough neighbours that k survive the exclusion; ef must be at least that.
        want = min(n, k + max(n_ex))
        self._index.set_ef(max(self.ef_search, want))
        labels, dist = self._index.knn_query(query, k=want)
        scores = (1.0 - dist).astype(np.float32)  # hnswlib "ip" distance is 1 - <q, x>
        labels = labels.astype(np.int64)
        out_l = np.zeros((len(query), k), np.int64)
        out_s = np.full((len(query), k), NEG_INF, np.float32)
        for b in range(len(query)):
            keep = ~np.isin(labels[b], exclude[b]) if exclude is not None else np.ones(want, bool)
            lab, sc = labels[b][keep][:k], scores[b][keep][:k]
            out_l[b, : len(lab)], out_s[b, : len(sc)] = lab, sc
        return _trim(out_l, out_s, k, n_ex, n)


def build_index(labels: np.ndarray, vectors: np.ndarray, ann_threshold: int) -> TopKIndex:
    """Exact below the threshold, HNSW at or above it."""
    if len(labels) >= ann_threshold:
        return HNSWIndex(labels, vectors)
    return ExactIndex(labels, vectors)
