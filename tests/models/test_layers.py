"""Shared layers: the CPU dropout and the written-out training attention."""

from __future__ import annotations

import pytest
import torch

from models import layers
from models.layers import Dropout, MultiHeadSelfAttention, attention_mask, dropout_keep, fast_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.6])
def test_dropout_keep_rate_and_scale(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(1_000_003)  # odd size: the last 64-bit draw is only partly used
    keep = dropout_keep(x, p)
    kept = keep != 0
    scale = keep[kept].unique()
    assert len(scale) == 1 and scale.item() == pytest.approx(1 / (1 - p), rel=1e-4)
    # 1M Bernoulli draws: the rate is within 5 standard deviations of 1 - p, and E[x * keep] = x.
    sd = (p * (1 - p) / len(x)) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sd
    assert abs(keep.double().mean().item() - 1.0) < 5 * sd / (1 - p)


def test_dropout_keep_masks_are_seeded_and_independent_across_elements() -> None:
    x = torch.ones(64, 50, 32)
    torch.manual_seed(1)
    a = dropout_keep(x, 0.5)
    torch.manual_seed(1)
    assert torch.equal(a, dropout_keep(x, 0.5))  # runs stay reproducible from the seed
    assert not torch.equal(a, dropout_keep(x, 0.5))  # and each call draws anew
    # The four 16-bit uniforms of one 64-bit draw must not be correlated: neighbours agree half the time.
    flat = (a != 0).flatten().float()
    agree = (flat[1:] == flat[:-1]).float().mean().item()
    assert abs(agree - 0.5) < 0.02


def test_dropout_is_identity_at_inference_and_keeps_nn_dropout_state() -> None:
    d = Dropout(0.3)
    x = torch.randn(4, 5)
    assert torch.equal(d.eval()(x), x)
    assert isinstance(d, torch.nn.Dropout) and d.p == 0.3
    y = d.train()(x)
    assert torch.all((y == 0) | torch.isclose(y, x / 0.7, rtol=1e-4))


def test_training_attention_is_softmax_attention_with_dropout_on_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 2, dropout=0.2)
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    mask = attention_mask(seq, causal=True)
    x = torch.randn(2, 5, 16)
    expected = attn.eval()(x, x, mask)  # torch's fused kernel, no dropout
    # With a keep-everything mask the written-out training path must equal the fused one ...
    monkeypatch.setattr(layers, "dropout_keep", lambda t, p: torch.ones_like(t))
    assert torch.allclose(attn.train()(x, x, mask), expected, atol=1e-6)
    # ... and with a real mask it drops attention weights: outputs change, future keys stay unseen.
    monkeypatch.undo()
    torch.manual_seed(3)
    y = attn.train()(x, x, mask)
    assert not torch.allclose(y, expected, atol=1e-3)
    x2 = x.clone()
    x2[:, -1] += 5.0  # change the newest position's input
    torch.manual_seed(3)
    y2 = attn.train()(x2, x2, mask)
    assert torch.allclose(y[:, :-1], y2[:, :-1], atol=1e-6)  # earlier positions cannot see it
    g = torch.randn_like(y)
    assert torch.isfinite(torch.autograd.grad((attn.train()(x, x, mask) * g).sum(), attn.qkv.weight)[0]).all()


def test_fast_cpu_dropout_switch_is_scoped_to_its_block() -> None:
    x = torch.ones(64, 64)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(3)
        ours = Dropout(0.5).train()(x)
        torch.manual_seed(3)
        return ours, torch.nn.functional.dropout(x, 0.5, True)

    ours, ref = draw()
    assert not torch.equal(ours, ref)  # the default: our own mask
    with fast_cpu_dropout(False):
        ours, ref = draw()
        assert torch.equal(ours, ref)  # torch's dropout, its random stream
        with fast_cpu_dropout(True):
            assert not torch.equal(*draw())
        assert torch.equal(*draw())  # the inner block restored the outer setting
    assert not torch.equal(*draw())  # and the outer block the default
