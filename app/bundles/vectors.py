"""Item vectors by model index, shared between worker processes where the catalogue is large.

A bundle's `item_vectors.npy` is memory-mapped, not read into each worker: the operating system
keeps one copy in its page cache for every process that maps the file. Items registered online
(from their text) go to a small in-process buffer beside it. Row 0 is padding (zeros).

Derived arrays a worker would otherwise compute for itself (unit vectors for cosine similarity,
an approximate index) are written once to an index cache next to the bundle and mapped the same
way; see `cache_dir` and app/bundles/index.py `IVFIndex.mapped`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


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
