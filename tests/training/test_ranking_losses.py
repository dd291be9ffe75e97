"""GRU4Rec losses against values computed by hand (plain Python floats)."""

from __future__ import annotations

import math

import pytest
import torch

from training.ranking_losses import ranking_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


R_POS = [1.0, 0.5]
R_NEG = [[0.2, -0.3, 2.0], [0.4, 0.1, 5.0]]
MASK = [[True, True, True], [True, True, False]]  # row 1: candidate 2 is its own target


def _t():
    return torch.tensor(R_POS), torch.tensor(R_NEG), torch.tensor(MASK)


def _softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def _negs(row: int) -> list[float]:
    return [r for r, k in zip(R_NEG[row], MASK[row], strict=True) if k]


def test_bpr_max_matches_hand_computation() -> None:
    bpreg = 0.5
    want = 0.0
    for i in range(2):
        negs = _negs(i)
        s = _softmax(negs)
        want += -math.log(sum(sj * _sig(R_POS[i] - rj) for sj, rj in zip(s, negs, strict=True)))
        want += bpreg * sum(sj * rj * rj for sj, rj in zip(s, negs, strict=True))
    got = ranking_loss(*_t(), loss="bpr-max", bpreg=bpreg)
    assert float(got) == pytest.approx(want / 2, rel=1e-5)


def test_top1_max_matches_hand_computation() -> None:
    want = 0.0
    for i in range(2):
        negs = _negs(i)
        s = _softmax(negs)
        want += sum(sj * (_sig(rj - R_POS[i]) + _sig(rj * rj)) for sj, rj in zip(s, negs, strict=True))
    assert float(ranking_loss(*_t(), loss="top1-max")) == pytest.approx(want / 2, rel=1e-5)


def test_cross_entropy_matches_hand_computation() -> None:
    want = sum(-math.log(_softmax([R_POS[i], *_negs(i)])[0]) for i in range(2)) / 2
    assert float(ranking_loss(*_t(), loss="ce")) == pytest.approx(want, rel=1e-5)


def test_final_activation_is_applied_to_scores() -> None:
    # tanh squashes every score before the loss.
    t = [math.tanh(x) for x in R_POS]
    want = sum(-math.log(_softmax([t[i], *[math.tanh(x) for x in _negs(i)]])[0]) for i in range(2)) / 2
    assert float(ranking_loss(*_t(), loss="ce", final_act="tanh")) == pytest.approx(want, rel=1e-5)


def test_masked_negative_is_ignored() -> None:
    r_pos, r_neg, mask = _t()
    bumped = r_neg.clone()
    bumped[1, 2] = 100.0  # masked out: must not matter
    for loss in ("ce", "bpr-max", "top1-max"):
        assert torch.allclose(ranking_loss(r_pos, r_neg, mask, loss), ranking_loss(r_pos, bumped, mask, loss))


def test_unknown_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        ranking_loss(*_t(), loss="bpr")
