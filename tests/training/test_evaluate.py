from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.evaluate import full_rank_eval, metrics_from_ranks, sampled_eval, target_ranks


def test_metrics_hand_computed() -> None:
    m = metrics_from_ranks(np.array([0, 3, 12]), ks=(1, 5, 10, 20))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert m["ndcg@20"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(14)) / 3)
    assert m["mrr@5"] == pytest.approx((1.0 + 1 / 4) / 3)
    assert m["mrr@10"] == pytest.approx((1.0 + 1 / 4) / 3)
    assert m["mrr@20"] == pytest.approx((1.0 + 1 / 4 + 1 / 13) / 3)


def test_rank_excludes_history_and_padding_but_never_the_target() -> None:
    #            pad  1    2    3    4    5
    s = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert target_ranks(s, torch.tensor([3]), None, 5).item() == 2  # items 1, 2 above
    assert target_ranks(s, torch.tensor([3]), [np.array([1])], 5).item() == 1  # 1 seen
    # the target itself is in the history (re-consumption): still ranked
    assert target_ranks(s, torch.tensor([3]), [np.array([1, 3])], 5).item() == 1
    # extra model-internal rows beyond N+1 (e.g. a [mask] token) are never ranked
    s2 = torch.tensor([[0.0, 1.0, 2.0, 100.0]])
    assert target_ranks(s2, torch.tensor([2]), None, 2).item() == 0


def test_full_rank_eval_with_oracle_and_reverse_scores() -> None:
    num_items = 50
    hists = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    targets = np.array([10, 20, 30])

    def oracle(seq: torch.Tensor) -> torch.Tensor:
        # knows the target from the last history item (test-only construction)
        last = seq[:, -1]
        table = {3: 10, 4: 20, 6: 30}
        out = torch.zeros(seq.shape[0], num_items + 1)
        for r, v in enumerate(last.tolist()):
            out[r, table[v]] = 1.0
        return out

    m = full_rank_eval(oracle, hists, targets, num_items, max_len=5)
    assert m["hr@1"] == 1.0 and m["ndcg@10"] == 1.0

    def worst(seq: torch.Tensor) -> torch.Tensor:
        return -torch.arange(num_items + 1, dtype=torch.float).expand(seq.shape[0], -1)

    m = full_rank_eval(worst, hists, targets, num_items, max_len=5)
    # target 10: 9 better, 3 seen -> rank 6; target 20: 18; target 30: 27
    assert m["hr@1"] == 0.0 and m["hr@20"] == pytest.approx(2 / 3)


def test_sampled_metrics_are_labelled_and_higher() -> None:
    num_items = 500
    rng = np.random.default_rng(0)
    hists = [rng.integers(1, num_items + 1, 10) for _ in range(50)]
    targets = rng.integers(1, num_items + 1, 50)

    def noisy(seq: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return torch.rand(seq.shape[0], num_items + 1, generator=g)

    full = full_rank_eval(noisy, hists, targets, num_items, 10)
    samp = sampled_eval(noisy, hists, targets, num_items, 10)
    assert all(k.startswith("sampled100_uni_") for k in samp)
    assert samp["sampled100_uni_hr@10"] > full["hr@10"]
