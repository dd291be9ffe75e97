"""SASRec.ablations (the ablation.onnx graph's math) equals forward on each explicit ablated history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.bundles.ablation import AblationGraph
from models.sasrec import SASRec, SASRecConfig
from training.ablation import INPUTS, OUTPUT, reference, supports_ablation_graph, write_ablation_graph


def _extremes(max_len: int) -> list[tuple[int, int]]:
    """(T, A) on the window's extremes: T = 2, short, max_len, max_len + 1; A = 2, 3 (odd), 4 (even),
    T - 1 and min(T, max_len) (the folded rows' parities both ways)."""
    out = set()
    for T in (2, 3, 5, max_len, max_len + 1):
        top = min(T, max_len)
        out.update((T, A) for A in (2, 3, 4, top - 1, top) if 2 <= A <= top)
    return sorted(out)


@pytest.mark.parametrize(("heads", "norm_first", "max_len"), [(1, True, 20), (2, False, 20), (2, True, 8)])
def test_ablations_equal_forward_on_the_ablated_histories(heads: int, norm_first: bool, max_len: int) -> None:
    torch.manual_seed(0)
    cfg = SASRecConfig(num_items=50, max_len=max_len, num_heads=heads, norm_first=norm_first)
    model = SASRec(cfg).eval()
    rng = np.random.default_rng(0)
    # 2 events, short, exactly max_len, max_len + 1 (an older event slides in), few ablations.
    for T, A in [(2, 2), (5, 5), (max_len, max_len), (max_len + 1, max_len), (max_len + 1, 3), (7, 4)]:
        window = rng.integers(1, 51, size=T)
        with torch.no_grad():
            got = model.ablations(torch.as_tensor(window[None]), torch.arange(A)).numpy()
        want = reference(model, window, A)[1:]  # the ablated histories (row 0 = the history itself)
        assert got.shape == want.shape == (A, cfg.dim)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("max_len", "heads", "norm_first", "layers"), [(8, 1, True, 2), (9, 2, False, 2), (9, 1, True, 1), (8, 2, True, 3)]
)
def test_folded_rows_on_the_window_extremes(max_len: int, heads: int, norm_first: bool, layers: int) -> None:
    """The folded suffix (ablations p and A - p in one row) for even and odd A and max_len, and a
    single block (first and last at once)."""
    torch.manual_seed(1)
    cfg = SASRecConfig(num_items=30, max_len=max_len, num_heads=heads, norm_first=norm_first, num_layers=layers)
    model = SASRec(cfg).eval()
    rng = np.random.default_rng(1)
    for T, A in _extremes(max_len):
        window = rng.integers(1, 31, size=T)
        with torch.no_grad():
            got = model.ablations(torch.as_tensor(window[None]), torch.arange(A)).numpy()
        np.testing.assert_allclose(got, reference(model, window, A)[1:], atol=1e-5, rtol=0, err_msg=f"T={T} A={A}")


def test_exported_graph_on_the_window_extremes(tmp_path: Path) -> None:
    """ablation.onnx (one export, dynamic T and A) equals the definition on the same extremes."""
    torch.manual_seed(2)
    max_len = 9
    model = SASRec(SASRecConfig(num_items=30, max_len=max_len, num_heads=2)).eval()
    meta = write_ablation_graph(model, tmp_path, opset=17)
    assert meta is not None and meta["parity_max_abs_diff"] < 1e-5 and meta["history_row"] is False
    sess = ort.InferenceSession(str(tmp_path / meta["file"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    for T, A in _extremes(max_len):
        window = rng.integers(1, 31, size=T).astype(np.int64)
        feed = {INPUTS[0]: window[None], INPUTS[1]: np.arange(A, dtype=np.int64)}
        got = sess.run([OUTPUT], feed)[0]
        np.testing.assert_allclose(got, reference(model, window, A)[1:], atol=1e-5, rtol=0, err_msg=f"T={T} A={A}")


def test_only_recency_positions_share_the_prefix() -> None:
    assert supports_ablation_graph(SASRec(SASRecConfig(num_items=5)))
    assert not supports_ablation_graph(SASRec(SASRecConfig(num_items=5, positions="absolute")))


def test_the_service_uses_the_graph_beyond_tiny_windows() -> None:
    """The measured crossover: the graph from 16 events and n x L >= 100, the batch below."""
    assert AblationGraph.cheaper(201, 50, 200) and AblationGraph.cheaper(100, 50, 200)
    assert AblationGraph.cheaper(50, 50, 200) and AblationGraph.cheaper(16, 8, 200)
    assert AblationGraph.cheaper(50, 2, 200) and AblationGraph.cheaper(25, 4, 200)
    assert not AblationGraph.cheaper(12, 12, 200) and not AblationGraph.cheaper(40, 2, 200)
    assert not AblationGraph.cheaper(8, 8, 200) and not AblationGraph.cheaper(20, 4, 200)
