"""SASRec.ablations (the ablation.onnx graph's math) equals forward on each explicit ablated history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.explain import AblationGraph
from models.sasrec import SASRec, SASRecConfig
from training.ablation import reference, supports_ablation_graph


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
        want = reference(model, window, A)
        assert got.shape == want.shape == (A + 1, cfg.dim)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_only_recency_positions_share_the_prefix() -> None:
    assert supports_ablation_graph(SASRec(SASRecConfig(num_items=5)))
    assert not supports_ablation_graph(SASRec(SASRecConfig(num_items=5, positions="absolute")))


def test_the_service_uses_the_graph_on_long_windows_only() -> None:
    assert AblationGraph.cheaper(201, 50, 200) and AblationGraph.cheaper(100, 50, 200)
    assert not AblationGraph.cheaper(50, 50, 200) and not AblationGraph.cheaper(70, 50, 200)
