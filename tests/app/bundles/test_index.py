"""Top-k: the exact index against brute force, HNSW recall, exclusion, online add."""

from __future__ import annotations

import numpy as np
import pytest

from app.bundles.index import ExactIndex, HNSWIndex, IVFIndex, build_index


def brute(table: np.ndarray, q: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    s = table @ q
    order = [int(i) + 1 for i in np.argsort(-s, kind="stable") if int(i) + 1 not in exclude]
    return order[:k]


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2000, 24)).astype(np.float32)


def test_exact_equals_brute_force_with_exclusion(table: np.ndarray) -> None:
    idx = ExactIndex(np.arange(1, len(table) + 1), table)
    rng = np.random.default_rng(1)
    q = rng.normal(size=(5, 24)).astype(np.float32)
    ex = [rng.integers(1, 2001, size=30) for _ in range(5)]
    labels, scores = idx.search(q, 10, ex)
    assert labels.shape == (5, 10)
    for b in range(5):
        assert labels[b].tolist() == brute(table, q[b], 10, set(ex[b].tolist()))
        np.testing.assert_allclose(scores[b], table[labels[b] - 1] @ q[b], rtol=1e-5)
        assert np.all(np.diff(scores[b]) <= 0)


def test_exact_k_larger_than_catalogue_minus_excluded() -> None:
    t = np.eye(4, dtype=np.float32)
    idx = ExactIndex(np.arange(1, 5), t)
    labels, _ = idx.search(np.ones((1, 4), np.float32), 10, [np.array([1, 2])])
    assert sorted(labels[0].tolist()) == [3, 4]


def test_exact_add_makes_new_items_findable(table: np.ndarray) -> None:
    idx = ExactIndex(np.arange(1, 101), table[:100])
    new = np.full((3, 24), 10.0, np.float32)
    idx.add(np.array([101, 102, 103]), new)
    labels, _ = idx.search(np.ones((1, 24), np.float32), 3)
    assert sorted(labels[0].tolist()) == [101, 102, 103]
    with pytest.raises(ValueError):
        idx.add(np.array([200]), new[:1])  # labels must continue the sequence


def test_hnsw_recall_and_exclusion(table: np.ndarray) -> None:
    idx = HNSWIndex(np.arange(1, len(table) + 1), table)
    rng = np.random.default_rng(2)
    q = rng.normal(size=(50, 24)).astype(np.float32)
    ex = [rng.integers(1, 2001, size=20) for _ in range(50)]
    labels, scores = idx.search(q, 10, ex)
    hits = [len(set(labels[b].tolist()) & set(brute(table, q[b], 10, set(ex[b].tolist())))) for b in range(50)]
    assert np.mean(hits) / 10 > 0.95
    assert not any(set(labels[b].tolist()) & set(ex[b].tolist()) for b in range(50))
    np.testing.assert_allclose(scores[0], table[labels[0] - 1] @ q[0], rtol=1e-4, atol=1e-4)


def test_hnsw_add_grows_past_capacity(table: np.ndarray) -> None:
    idx = HNSWIndex(np.arange(1, 21), table[:20])
    idx.add(np.arange(21, 101), table[20:100])
    assert len(idx) == 100
    labels, _ = idx.search(table[99:100] * 100, 1)
    assert labels[0, 0] == 100


def test_threshold_picks_backend(table: np.ndarray) -> None:
    assert isinstance(build_index(np.arange(1, 2001), table, ann_threshold=5000), ExactIndex)
    assert isinstance(build_index(np.arange(1, 2001), table, ann_threshold=1000), HNSWIndex)
    assert isinstance(build_index(np.arange(1, 2001), table, ann_threshold=1000, ivf_threshold=1500), IVFIndex)


def test_ivf_recall_exclusion_exact_scores_and_add() -> None:
    # Clustered data, as item tables are: 200 centres, 100 noisy copies each.
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(200, 24)).astype(np.float32)
    table = (centres[rng.integers(0, 200, 20_000)] + 0.3 * rng.normal(size=(20_000, 24))).astype(np.float32)
    idx = IVFIndex(np.arange(1, 20_001), table)
    assert idx.nlist == 512 and idx.nprobe == 16  # 4 sqrt(N) cells, a 32nd of them probed
    q = rng.normal(size=(50, 24)).astype(np.float32)
    ex = [rng.integers(1, 20_001, size=20) for _ in range(50)]
    labels, scores = idx.search(q, 10, ex)
    hits = [len(set(labels[b].tolist()) & set(brute(table, q[b], 10, set(ex[b].tolist())))) for b in range(50)]
    assert np.mean(hits) / 10 > 0.95
    assert not any(set(labels[b].tolist()) & set(ex[b].tolist()) for b in range(50))
    np.testing.assert_allclose(scores[0], table[labels[0] - 1] @ q[0], rtol=1e-4, atol=1e-4)
    idx.add(np.array([20_001]), q[:1] * 100)  # a new item, far out along the first query
    assert len(idx) == 20_001 and idx.search(q[:1], 1)[0][0, 0] == 20_001
