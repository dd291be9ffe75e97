"""LRURec: the parallel scan is the recurrence, its hand-written backward is the gradient, the
parameterisation and ring initialisation are the paper's, and the recurrent step equals the
whole-history forward."""

from __future__ import annotations

import math

import pytest
import torch

from models import lrurec
from models.lrurec import LRURec, LRURecConfig, LRURecStep, _ComplexScan, scan_levels


def _model(**kw) -> LRURec:
    torch.manual_seed(0)
    cfg = {"num_items": 40, "max_len": 24, "dim": 16, "state_dim": 8, "num_layers": 2, **kw}
    return LRURec(LRURecConfig(**cfg)).eval()


def _sequential(b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """h_t = lam h_{t-1} + b_t, one step at a time: the definition the scan must match."""
    h, out = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        h = lam * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
def test_parallel_scan_equals_the_recurrence(length: int) -> None:
    g = torch.Generator().manual_seed(length)
    b = torch.randn(3, length, 5, dtype=torch.complex128, generator=g)
    lam = 0.95 * torch.exp(1j * 6.0 * torch.rand(5, dtype=torch.float64, generator=g))
    torch.testing.assert_close(_ComplexScan.apply(b, lam), _sequential(b, lam))


def test_scan_backward_is_the_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    b = torch.randn(2, 11, 4, dtype=torch.complex128, generator=g, requires_grad=True)
    lam = (0.9 * torch.exp(1j * torch.rand(4, dtype=torch.float64, generator=g))).requires_grad_()
    assert torch.autograd.gradcheck(_ComplexScan.apply, (b, lam))


def test_training_gradients_equal_the_exported_real_pair_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The complex in-place scan (training) and the real-pair scan (what ONNX runs) agree in value and gradient."""
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 9, 2, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = _model(dropout=0.0, lru_dropout=0.0).train()
        loss = (m.hidden(seq) @ m.item_vectors().T).logsumexp(-1).sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    loss_fast, grads_fast = run()
    monkeypatch.setattr(lrurec, "_exporting", lambda: True)
    loss_real, grads_real = run()
    torch.testing.assert_close(loss_fast, loss_real, rtol=1e-5, atol=1e-5)
    assert grads_fast.keys() == grads_real.keys() and any("nu_log" in n for n in grads_fast)
    for name in grads_fast:
        torch.testing.assert_close(grads_fast[name], grads_real[name], rtol=1e-4, atol=1e-5, msg=name)


def test_ring_initialisation_and_gamma_normalisation() -> None:
    m = _model(state_dim=512, r_min=0.4, r_max=0.9, max_phase=math.pi / 10).requires_grad_(False)
    for block in m.blocks:
        lru = block.lru
        modulus = torch.exp(-torch.exp(lru.nu_log))  # |lambda| = exp(-exp(nu_log))
        phase = torch.exp(lru.theta_log)
        assert float(modulus.min()) >= 0.4 and float(modulus.max()) <= 0.9
        assert float(modulus.max()) - float(modulus.min()) > 0.4  # spread over the ring
        assert float(phase.min()) >= 0.0 and float(phase.max()) <= math.pi / 10
        torch.testing.assert_close(torch.exp(lru.gamma_log), torch.sqrt(1 - modulus**2))
        lam = lru.power(1)
        torch.testing.assert_close(lam.norm(dim=-1), modulus)  # lambda = exp(-exp(nu_log) + i exp(theta_log))
        torch.testing.assert_close(torch.atan2(lam[:, 1], lam[:, 0]), phase)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="r_min"):
        LRURecConfig(num_items=5, r_min=0.9, r_max=0.8)
    with pytest.raises(ValueError, match="max_phase"):
        LRURecConfig(num_items=5, max_phase=0.0)


def test_one_event_at_a_time_equals_the_whole_history() -> None:
    m = _model()
    seq = torch.tensor([[0, 0, 0, 0, 5, 9, 1, 33, 2, 7], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
    with torch.no_grad():
        whole = m(seq)  # (2, d + 1)
        for row in range(2):
            items = seq[row][seq[row] != 0]
            state = torch.zeros(m.cfg.num_layers, 1, 2 * m.cfg.state_dim)
            for item in items:
                state, vec = m.step(state, item.view(1, 1))
            torch.testing.assert_close(vec[0], whole[row], rtol=0, atol=1e-5)
            # A prefix, then the rest in one call: the same state and vector.
            mid, _ = m.step(torch.zeros_like(state), items[None, :3])
            state2, vec2 = m.step(mid, items[None, 3:])
            torch.testing.assert_close(vec2[0], whole[row], rtol=0, atol=1e-5)
            torch.testing.assert_close(state2, state, rtol=0, atol=1e-5)


def test_left_padding_is_invisible_and_the_model_is_causal() -> None:
    m = _model()
    seq = torch.tensor([[4, 8, 15, 16, 23, 2]])
    with torch.no_grad():
        alone = m(seq)
        padded = m(torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], dim=1))
        torch.testing.assert_close(padded, alone, rtol=0, atol=1e-6)
        h = m.hidden(seq)
        changed = m.hidden(torch.tensor([[4, 8, 15, 16, 30, 31]]))
        torch.testing.assert_close(h[:, :4], changed[:, :4], rtol=0, atol=0)  # later items change nothing before
        assert (h[:, 4:] - changed[:, 4:]).abs().max() > 1e-3
        torch.testing.assert_close(h[:, -1], alone)


def test_histories_longer_than_max_len_read_the_newest_window() -> None:
    m = _model(max_len=8)
    seq = torch.randint(1, 41, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m(seq), m(seq[:, -8:]), rtol=0, atol=0)


def test_traced_graph_equals_eager_at_every_length() -> None:
    """The exported path (real pairs, a fixed number of scan levels) at lengths other than the trace's."""
    m = _model()
    with torch.no_grad():
        traced = torch.jit.trace(m, (torch.randint(1, 41, (2, 5)),), check_trace=False)
        step = torch.jit.trace(LRURecStep(m), (torch.zeros(2, 1, 16), torch.randint(1, 41, (1, 3))), check_trace=False)
        g = torch.Generator().manual_seed(2)
        for n in (1, 3, 17, 24, 30):
            seq = torch.randint(1, 41, (3, n), generator=g)
            seq[0, : n // 2] = 0
            torch.testing.assert_close(traced(seq), m(seq), rtol=0, atol=1e-5)
            state = torch.randn(2, 3, 16, generator=g) * 0.3
            window = seq[1:2, -m.max_len :].expand(3, -1)
            for got, want in zip(step(state, window), m.step(state, window), strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_scores_fold_in_the_item_bias() -> None:
    m = _model()
    with torch.no_grad():
        m.item_bias.copy_(torch.arange(41, dtype=torch.float) * 0.01)
        seq = torch.tensor([[1, 2, 3]])
        x = m.encode(seq, last_only=True)[0][:, -1]  # (1, d)
        want = x @ m.item_emb.weight.T + m.item_bias
        torch.testing.assert_close(m.score(seq), want)
    assert m.item_vectors().shape == (41, 17) and m.state_shape == (2, 16)


def test_scan_levels() -> None:
    assert [scan_levels(n) for n in (1, 2, 3, 4, 5, 128, 129, 200)] == [0, 1, 2, 2, 3, 7, 8, 8]
