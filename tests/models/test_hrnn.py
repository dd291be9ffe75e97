from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gru4rec import GRU4Rec, GRU4RecConfig
from models.hrnn import HRNN, HRNNConfig

GAP = 1800


def _model(**kw) -> HRNN:
    torch.manual_seed(0)
    m = HRNN(HRNNConfig(num_items=30, max_len=12, dim=4, user_dim=3, session_gap=GAP, **kw)).eval()
    with torch.no_grad():  # non-zero biases everywhere: a padded or skipped step would show
        for name, p in m.named_parameters():
            if "bias" in name:
                p.normal_()
    return m


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gru(W: np.ndarray, b: np.ndarray, U: np.ndarray, c: np.ndarray, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The GRU cell written out: r, z, n gates, h' = (1 - z) n + z h (rows of W, U in r, z, n order)."""
    H = len(h)
    gi, gh = W @ x + b, U @ h + c
    r = _sig(gi[:H] + gh[:H])
    z = _sig(gi[H : 2 * H] + gh[H : 2 * H])
    n = np.tanh(gi[2 * H :] + r * gh[2 * H :])
    return (1 - z) * n + z * h


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


@pytest.mark.parametrize("variant", ["init", "all"])
def test_state_hand_off_across_a_session_boundary_matches_hand_computation(variant: str) -> None:
    m = _model(variant=variant)
    items = [3, 7, 1, 9, 4]
    times = [1000, 1060, 1100, 1100 + GAP + 1, 1100 + GAP + 50]  # sessions [3, 7, 1] and [9, 4]
    E = _np(m.item_out.weight)
    Ws, bs, Us, cs = _np(m.ses.inp.weight), _np(m.ses.inp.bias), _np(m.ses.rec.weight), _np(m.ses.rec.bias)
    Wu, bu, Uu, cu = _np(m.usr.inp.weight), _np(m.usr.inp.bias), _np(m.usr.rec.weight), _np(m.usr.rec.bias)
    Wi, bi = _np(m.init_lin.weight), _np(m.init_lin.bias)

    def ses_in(i: int, c: np.ndarray) -> np.ndarray:
        return np.concatenate([E[i], c]) if variant == "all" else E[i]

    c = np.zeros(3)  # c_0 = 0
    s = np.tanh(Wi @ c + bi)  # s_{1,0} = tanh(W_init c_0 + b_init)
    expected = []
    for i in items[:3]:
        s = _gru(Ws, bs, Us, cs, ses_in(i, c), s)
        expected.append(s)
    c = _gru(Wu, bu, Uu, cu, s, c)  # c_1 = GRU_usr(s_1, c_0): the first session's last state
    s = np.tanh(Wi @ c + bi)  # s_{2,0} = tanh(W_init c_1 + b_init)
    for i in items[3:]:
        s = _gru(Ws, bs, Us, cs, ses_in(i, c), s)
        expected.append(s)

    with torch.no_grad():
        got = m.hidden(torch.tensor([items]), torch.tensor([times]))[0]
        user = m(torch.tensor([items]), torch.tensor([times]))[0]
    np.testing.assert_allclose(_np(got), np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(_np(user[:-1]), expected[-1], atol=1e-5)  # forward = the newest state (+ bias 1)
    assert float(user[-1]) == 1.0


def test_gap_equal_to_session_gap_is_not_a_boundary() -> None:
    m = _model()
    items = torch.tensor([[3, 7, 1]])
    with torch.no_grad():
        first, boundary = m.session_starts(items, torch.tensor([[0, GAP, 2 * GAP + 1]]))
    assert first.tolist() == [[True, False, False]]
    assert boundary.tolist() == [[False, False, True]]  # as split_by_gap: a new session after > gap


def test_left_padding_and_max_len_cut_do_not_change_the_user_vector() -> None:
    m = _model()
    rng = np.random.default_rng(0)
    lens = [1, 4, 9]
    seqs = [torch.as_tensor(rng.integers(1, 31, n)) for n in lens]
    ts = [torch.as_tensor(np.cumsum(rng.choice([10, 5000], n))) for n in lens]
    items = torch.zeros(3, 9, dtype=torch.long)
    times = torch.zeros(3, 9, dtype=torch.long)
    for r, (s, t) in enumerate(zip(seqs, ts, strict=True)):
        items[r, 9 - len(s) :], times[r, 9 - len(s) :] = s, t
    with torch.no_grad():
        out = m(items, times)
        for r, (s, t) in enumerate(zip(seqs, ts, strict=True)):
            assert torch.allclose(out[r], m(s[None], t[None])[0], atol=1e-6)
        long_items = torch.as_tensor(rng.integers(1, 31, (2, 20)))
        long_times = torch.as_tensor(np.cumsum(rng.choice([10, 5000], (2, 20)), axis=1))
        assert torch.allclose(m(long_items, long_times), m(long_items[:, -12:], long_times[:, -12:]), atol=1e-6)


def test_causal() -> None:
    m = _model(variant="all")
    items = torch.randint(1, 31, (2, 10))
    times = torch.cumsum(torch.randint(0, 4000, (2, 10)), dim=1)
    changed = items.clone()
    changed[:, -1] = items[:, -1] % 30 + 1
    with torch.no_grad():
        assert torch.allclose(m.hidden(items, times)[:, :-1], m.hidden(changed, times)[:, :-1], atol=1e-6)
        assert not torch.allclose(m.hidden(items, times)[:, -1], m.hidden(changed, times)[:, -1])


def test_without_user_state_each_session_is_gru4rec_from_zero() -> None:
    m = _model(user_state=False)
    assert m.usr is None and m.init_lin is None
    g = GRU4Rec(GRU4RecConfig(num_items=30, max_len=12, dim=4)).eval()
    with torch.no_grad():
        g.item_out.weight.copy_(m.item_out.weight)
        g.item_bias.copy_(m.item_bias)
        g.gru.weight_ih_l0.copy_(m.ses.inp.weight)
        g.gru.bias_ih_l0.copy_(m.ses.inp.bias)
        g.gru.weight_hh_l0.copy_(m.ses.rec.weight)
        g.gru.bias_hh_l0.copy_(m.ses.rec.bias)
        items = torch.tensor([[3, 7, 1, 9, 4, 2]])
        times = torch.tensor([[0, 10, 20, 20 + GAP + 1, 30 + GAP, 40 + GAP]])
        assert torch.allclose(m(items, times), g(items[:, 3:]), atol=1e-6)  # only the last session counts
        assert torch.allclose(m.score(items, times), g.score(items[:, 3:]), atol=1e-5)


def test_user_state_changes_the_second_session() -> None:
    m = _model()
    a = torch.tensor([[3, 7, 1, 9, 4]])
    b = torch.tensor([[5, 6, 8, 9, 4]])  # another first session, the same second one
    times = torch.tensor([[0, 10, 20, 20 + GAP + 1, 30 + GAP]])
    with torch.no_grad():
        assert not torch.allclose(m(a, times), m(b, times), atol=1e-4)
        same_session = torch.tensor([[0, 10, 20, 30, 40]])  # one session: no user update at all
        assert not torch.allclose(m(a, times), m(a, same_session), atol=1e-4)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="variant"):
        HRNN(HRNNConfig(num_items=5, variant="every"))
