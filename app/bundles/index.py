"""Item vectors by model index, shared between worker processes, and top-k maximum inner
product search over them.

A bundle's `item_vectors.npy` is memory-mapped, not read into each worker: the operating system
keeps one copy in its page cache for every process that maps the file. Items registered online
(from their text) go to a small in-process buffer beside it. Row 0 is padding (zeros).

Derived arrays a worker would otherwise compute for itself (unit vectors for cosine similarity,
an approximate index) are written once to an index cache next to the bundle and mapped the same
way; see `cache_dir` and `IVFIndex.mapped` below.

The search has one interface. `ExactIndex` (numpy/BLAS) is exact and, for small catalogues, also fastest. `HNSWIndex`
(faiss HNSW, chosen by measurement: see benchmarks/results/serving/ann.md) takes over at
`ann_threshold` items, and `IVFIndex` (faiss inverted lists) at `IVF_MIN_ITEMS`: at a million
items inner-product HNSW needed ef_search > 256 for recall@10 0.93 and 9 minutes to build,
IVF reaches 0.99-1.0 at 0.25-0.5 ms and builds in half a minute (benchmarks/results/serving/ann_1m.md).
All take `add`, because items arrive online (cold-start items registered from text). Labels
are model item indices (1..N); 0 is padding and never returned.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
    return unit


class RowTable:
    """Rows 1..n from `base` (its row r - 1; often a read-only memory map), rows n + 1.. from an
    in-process buffer grown by `append`; row 0 is zeros."""

    def __init__(self, base: np.ndarray) -> None:
        self.base = base
        self.dim = int(base.shape[1])
        self.n = len(base)
        self._extra = np.zeros((16, self.dim), np.float32)
        self._m = 0

    def __len__(self) -> int:
        """Rows including the padding row."""
        return 1 + self.n + self._m

    def take(self, labels: np.ndarray) -> np.ndarray:
        """Labels of any shape -> (..., dim) float32 rows (label 0 -> zeros)."""
        labels = np.asarray(labels, dtype=np.int64)
        flat = labels.reshape(-1)
        base = (flat >= 1) & (flat <= self.n)
        if base.all():
            out = np.asarray(self.base[flat - 1], dtype=np.float32)
        else:
            out = np.zeros((flat.size, self.dim), np.float32)
            out[base] = self.base[flat[base] - 1]
            extra = flat > self.n
            if extra.any():
                out[extra] = self._extra[flat[extra] - self.n - 1]
        return out.reshape(*labels.shape, self.dim)

    def append(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        need = self._m + len(vectors)
        if need > len(self._extra):  # amortised O(1) per item
            grown = np.zeros((max(need, 2 * len(self._extra)), self.dim), np.float32)
            grown[: self._m] = self._extra[: self._m]
            self._extra = grown
        self._extra[self._m : need] = vectors
        self._m = need


def cache_dir(key: str) -> Path:
    """The index cache of the bundle whose checksums make `key`: a folder of the temporary
    directory ($TMPDIR), shared by the processes of a machine (or a container), so a large
    catalogue's derived arrays are built once per machine, not once per worker, and a read-only
    bundle directory is never written to (nor its mtime, which reloads watch, changed)."""
    path = Path(tempfile.gettempdir()) / "seqrec-index" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def files_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per file across processes: the others wait, then read what it wrote."""
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_once(path: Path, write: Callable[[Path], None]) -> Path:
    """Make `path` exist: written by the first process (to a temporary name, then renamed, so a
    reader never sees half a file), read as it is by every later one."""
    if path.exists():
        return path
    with _locked(path):
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                write(tmp)
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    return path


def mapped_array(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()` saved once as .npy at `path`, then memory-mapped read-only by every process."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, compute(), allow_pickle=False)

    build_once(path, write)
    arr: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    return arr


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


def _exclude_count(exclude: list[np.ndarray] | None, b: int, n: int, k: int) -> list[int]:
    """Distinct excluded labels per row; only counted exactly when it can matter (k + |exclude| > n)."""
    if exclude is None:
        return [0] * b
    return [len(np.unique(e)) if k + len(e) > n else len(e) for e in exclude]


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
        labels = np.zeros((len(query), k), np.int64)
        top = np.empty((len(query), k), np.float32)
        for b, row in enumerate(scores):  # B is 1 per request: 1-D ops beat take_along_axis
            if k < self._n:
                part = np.argpartition(-row, k - 1)[:k]
                # Equal scores (items with equal vectors) in label order, at the cut too: a top-k
                # is then the prefix of every deeper top-k (the user cache keeps deeper lists).
                edge = row[part].min()
                above = part[row[part] > edge]
                part = np.concatenate([above, np.flatnonzero(row == edge)[: k - len(above)]])
            else:
                part = np.arange(self._n)
            best = part[np.lexsort((part, -row[part]))]
            labels[b], top[b] = best + self.first, row[best]
        labels[~np.isfinite(top)] = 0  # excluded items never come back
        return _trim(labels, top, k, _exclude_count(exclude, len(query), self._n, k), self._n)


def _trim(labels: np.ndarray, scores: np.ndarray, k: int, n_ex: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop trailing columns that are padding in every row (k larger than what is left)."""
    keep = min(k, max(n - e for e in n_ex)) if n_ex else k
    return labels[:, :keep], scores[:, :keep]


class _FaissIndex:
    """What the faiss-backed indexes share: our labels as faiss ids, online `add`, and a
    one-query-at-a-time search with seen items filtered inside faiss (an ID selector), not by
    over-fetching k + |history| neighbours and dropping them afterwards. Subclasses build
    `self._index` and say how wide one search is (`_params`)."""

    dim: int
    _index: Any

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        self._index.add_with_ids(vectors, np.ascontiguousarray(labels, dtype=np.int64))

    def _params(self, k: int, sel: Any) -> Any:
        raise NotImplementedError

    def search(
        self, query: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1, self.dim)
        n = len(self)
        n_ex = _exclude_count(exclude, len(query), n, k)
        kk = min(k, n)
        out_l = np.zeros((len(query), kk), np.int64)
        out_s = np.full((len(query), kk), NEG_INF, np.float32)
        for b in range(len(query)):
            sel = None
            if exclude is not None and len(exclude[b]):
                ex = np.ascontiguousarray(exclude[b], dtype=np.int64)
                sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(ex))
            scores, labels = self._index.search(query[b : b + 1], kk, params=self._params(kk, sel))
            found = labels[0] >= 0  # -1: fewer than k candidates reachable
            out_l[b, found], out_s[b, found] = labels[0][found], scores[0][found]
        return _trim(out_l, out_s, k, n_ex, n)


class HNSWIndex(_FaissIndex):
    """Approximate inner-product search: a faiss HNSW graph, single-threaded."""

    def __init__(
        self,
        labels: np.ndarray,
        vectors: np.ndarray,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 128,
    ) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # one thread per worker process
        self.dim = int(vectors.shape[1])
        self.ef_search = ef_search
        graph = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        self._index = faiss.IndexIDMap2(graph)  # our labels (model item indices), not insertion order
        self.add(labels, vectors)

    def _params(self, k: int, sel: Any) -> Any:
        import faiss

        ef = max(self.ef_search, k)
        return (
            faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
            if sel is not None
            else faiss.SearchParametersHNSW(efSearch=ef)
        )


class IVFIndex(_FaissIndex):
    """Approximate inner-product search: faiss inverted lists (IVF-Flat), single-threaded.

    k-means splits the catalogue into `nlist` ~ 4 sqrt(N) cells; a query scans the `nprobe`
    cells whose centroids score highest (nlist / 32 of them: recall@10 1.0 at 1M items, see
    benchmarks/results/serving/ann_1m.md). Vectors are stored exactly, so the returned scores are exact.
    Items added later go to their nearest existing cell.
    """

    def __init__(self, labels: np.ndarray, vectors: np.ndarray, nlist: int | None = None, seed: int = 0) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # one thread per worker process
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, self.dim = vectors.shape
        self.nlist = nlist or int(2 ** round(np.log2(max(4 * np.sqrt(n), 16))))
        self.nprobe = max(8, self.nlist // 32)
        self._quantizer = faiss.IndexFlatIP(self.dim)  # kept referenced: the IVF index does not own it
        self._index = faiss.IndexIVFFlat(self._quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample (40 points per cell is faiss's own recommendation): seconds, not minutes.
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, 40 * self.nlist), replace=False)]
        self._index.train(sample)
        self.add(labels, vectors)

    @classmethod
    def mapped(cls, path: Path, labels: np.ndarray, vectors: np.ndarray) -> IVFIndex:
        """The index built once into `path` (by whichever process comes first), then memory-mapped
        read-only: every worker on the machine shares its pages. It cannot take `add`: wrap it
        in `WithAdded`."""
        import faiss

        build_once(path, lambda tmp: faiss.write_index(cls(labels, vectors)._index, str(tmp)))
        faiss.omp_set_num_threads(1)
        self = cls.__new__(cls)
        self._index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        self.dim, self.nlist = int(self._index.d), int(self._index.nlist)
        self.nprobe = max(8, self.nlist // 32)
        return self

    def _params(self, k: int, sel: Any) -> Any:
        import faiss

        if sel is not None:
            return faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        return faiss.SearchParametersIVF(nprobe=self.nprobe)


class WithAdded:
    """A read-only index (mapped from the index cache) plus the items added online in an exact
    index of their own; a search asks both and keeps the best k."""

    def __init__(self, base: TopKIndex) -> None:
        self.base = base
        self.dim = base.dim
        self.added: ExactIndex | None = None

    def __len__(self) -> int:
        return len(self.base) + (len(self.added) if self.added is not None else 0)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if self.added is None:
            self.added = ExactIndex(labels, vectors)
        else:
            self.added.add(labels, vectors)

    def search(
        self, query: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        labels, scores = self.base.search(query, k, exclude)
        if self.added is None:
            return labels, scores
        more_l, more_s = self.added.search(query, k, exclude)
        both_l, both_s = np.concatenate([labels, more_l], 1), np.concatenate([scores, more_s], 1)
        both_s = np.where(both_l > 0, both_s, NEG_INF)
        order = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
        out_l, out_s = np.take_along_axis(both_l, order, 1), np.take_along_axis(both_s, order, 1)
        out_l[~np.isfinite(out_s)] = 0
        query = np.asarray(query).reshape(-1, self.dim)
        return _trim(out_l, out_s, k, _exclude_count(exclude, len(query), len(self), k), len(self))


IVF_MIN_ITEMS = 200_000


def build_index(
    labels: np.ndarray,
    vectors: np.ndarray,
    ann_threshold: int,
    ivf_threshold: int | None = None,
    cache: Path | None = None,
) -> TopKIndex:
    """Exact below `ann_threshold`, HNSW from there, IVF from `ivf_threshold` (if larger).

    With `cache` (a file path), the IVF index is built once per machine and memory-mapped."""
    if len(labels) >= max(ann_threshold, IVF_MIN_ITEMS if ivf_threshold is None else ivf_threshold):
        return IVFIndex(labels, vectors) if cache is None else WithAdded(IVFIndex.mapped(cache, labels, vectors))
    if len(labels) >= ann_threshold:
        return HNSWIndex(labels, vectors)
    return ExactIndex(labels, vectors)
