"""Item vectors shared between workers: mapped tables, the index cache built once per machine, and
online adds beside a read-only index (app/bundles/index.py, its vector half)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from app.bundles import bundle as bundle_mod
from app.bundles import index as index_mod
from app.bundles import spaces as spaces_mod
from app.bundles.index import ExactIndex, IVFIndex, RowTable, WithAdded, build_once, mapped_array


def test_a_row_table_reads_the_base_then_the_added_rows_with_zero_padding() -> None:
    base = np.arange(12, dtype=np.float32).reshape(4, 3)
    t = RowTable(base)
    t.append(np.full((2, 3), 7, np.float32))
    assert len(t) == 1 + 4 + 2
    got = t.take(np.array([[0, 1, 6], [4, 5, 2]]))
    assert got.shape == (2, 3, 3)
    assert np.array_equal(got[0, 0], np.zeros(3)) and np.array_equal(got[0, 1], base[0])
    assert np.array_equal(got[0, 2], np.full(3, 7)) and np.array_equal(got[1, 0], base[3])
    assert np.array_equal(t.take(np.array([2, 3])), base[1:3])


def test_concurrent_builders_write_a_file_once_and_all_read_it(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.ones((5, 2), np.float32)

    out: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: out.append(mapped_array(tmp_path / "a.npy", compute))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and len(out) == 4
    assert all(isinstance(a, np.memmap) and a.sum() == 10 for a in out)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a.npy"]


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "x.faiss", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_the_mapped_index_answers_as_the_built_one_and_takes_online_items(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 16)).astype(np.float32)
    labels = np.arange(1, 3001, dtype=np.int64)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    built = IVFIndex(labels, vecs)
    mapped = WithAdded(IVFIndex.mapped(tmp_path / "ivf.faiss", labels, vecs))
    again = WithAdded(IVFIndex.mapped(tmp_path / "ivf.faiss", labels, vecs))  # a second worker: reads the file
    excl = [np.array([1, 2, 3])] * len(queries)
    for a, b in ((built, mapped), (built, again)):
        la, sa = a.search(queries, 10, excl)
        lb, sb = b.search(queries, 10, excl)
        assert np.array_equal(la, lb) and np.allclose(sa, sb)
    # An online item that beats every catalogue item comes first; excluded, it never comes back.
    best = (queries[0] / np.linalg.norm(queries[0]) * 100).astype(np.float32)[None]
    mapped.add(np.array([3001]), best)
    assert len(mapped) == 3001
    got, _ = mapped.search(queries[:1], 5)
    assert got[0, 0] == 3001 and len(set(got[0].tolist())) == 5
    got, _ = mapped.search(queries[:1], 5, [np.array([3001])])
    assert 3001 not in got[0]
    exact, _ = ExactIndex(np.arange(1, 3002), np.concatenate([vecs, best])).search(queries[:1], 1)
    assert exact[0, 0] == 3001


def test_a_large_bundle_is_built_once_per_machine_and_mapped(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny bundle stands in for a large one: the IVF threshold lowered to its size.
    for mod in (bundle_mod, index_mod, spaces_mod):
        monkeypatch.setattr(mod, "IVF_MIN_ITEMS", 1)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = bundle_mod.Bundle.load(bundle_path, ann_threshold=1)
    cache = tmp_path / "seqrec-index"
    files = sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert files == ["ivf-scores.faiss", "space-output-ivf.faiss", "space-output-unit.npy"]
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.faiss")}
    second = bundle_mod.Bundle.load(bundle_path, ann_threshold=1)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.faiss")} == stamps  # read, not rebuilt
    assert isinstance(second.index, WithAdded) and isinstance(second.spaces["output"].table, np.memmap)
    q = first.user_vectors([np.array([1, 2, 3])])
    assert np.array_equal(first.index.search(q, 5)[0], second.index.search(q, 5)[0])
    assert np.array_equal(second.vectors(np.array([1, 2])), np.load(bundle_path / "item_vectors.npy")[:2])
    assert not (bundle_path / ".index").exists()  # the bundle directory is never written
