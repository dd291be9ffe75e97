from __future__ import annotations

import numpy as np
import pytest
import torch

from models.tisasrec import TiSASRec, TiSASRecConfig, _running_min, time_intervals
from training.tasks import shifted_batches


def _model(**kw) -> TiSASRec:
    torch.manual_seed(0)
    cfg = {"num_items": 100, "max_len": 20, "dim": 32, "num_layers": 2, "num_heads": 2, "max_interval": 16, **kw}
    return TiSASRec(TiSASRecConfig(**cfg)).eval()


def _times(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Increasing unix seconds with repeats (gap 0) and gaps from seconds to days, as in MovieLens."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.randint(0, 4, (batch, length), generator=g) * torch.randint(0, 5000, (batch, length), generator=g)
    return 978_300_000 + gaps.cumsum(dim=1)


def test_interval_matrix_equals_the_hand_computed_one() -> None:
    # User 1: two padding slots, two events in the same second (gap 0 is not a unit), then 30 s and
    # 60 s gaps. User 2: gaps 10, 5, 20, 2, 60. k = 6. Row i is scaled by the smallest non-zero gap
    # up to position i (1 before any), then floored and clipped to k.
    items = torch.tensor([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])
    times = torch.tensor([[0, 0, 100, 100, 130, 190], [10, 20, 25, 45, 47, 107]])
    want_1 = [  # r_u: -, -, 1, 1, 30, 30
        [6, 6, 6, 6, 6, 6],  # pairs with a padding position are k (masked in attention)
        [6, 6, 6, 6, 6, 6],
        [6, 6, 0, 0, 6, 6],  # 30 s and 90 s at scale 1 clip to 6
        [6, 6, 0, 0, 6, 6],
        [6, 6, 1, 1, 0, 2],  # scale 30: 30/30 = 1, 60/30 = 2
        [6, 6, 3, 3, 2, 0],  # 90/30 = 3
    ]
    want_2 = [  # r_u: 1, 10, 5, 5, 2, 2
        [0, 6, 6, 6, 6, 6],
        [1, 0, 0, 2, 2, 6],  # 10, 0, 5, 25, 27, 87 over 10
        [3, 1, 0, 4, 4, 6],  # 15, 5, 0, 20, 22, 82 over 5
        [6, 5, 4, 0, 0, 6],  # 35 / 5 = 7 -> 6
        [6, 6, 6, 1, 0, 6],  # over 2
        [6, 6, 6, 6, 6, 0],
    ]
    assert time_intervals(items, times, 6).tolist() == [want_1, want_2]
    # the exported graph's running minimum (no cummin in ONNX) gives the same integers
    gaps = torch.tensor([[2**31 - 1, 30, 7, 2**31 - 1, 9, 3, 50]])
    assert _running_min(gaps, exportable=True).tolist() == [[2**31 - 1, 30, 7, 7, 7, 3, 3]]
    assert torch.equal(_running_min(gaps, exportable=False), _running_min(gaps, exportable=True))
    # the padding slots' times are ignored (the contract pads them with 0; anything else is the same)
    assert torch.equal(time_intervals(items, times + (items == 0) * 777, 6), time_intervals(items, times, 6))


def test_newest_row_uses_the_windows_smallest_nonzero_interval() -> None:
    items = torch.ones(1, 5, dtype=torch.long)
    times = torch.tensor([[1000, 1000, 1300, 1900, 1960]])  # non-zero gaps 300, 600, 60 -> r_u = 60
    r = time_intervals(items, times, 1000)
    assert r[0, -1].tolist() == [16, 16, 11, 1, 0]  # 960 / 60, 960 / 60, 660 / 60, 60 / 60
    assert r[0, 3].tolist() == [3, 3, 2, 0, 0]  # scale 300 before the 60 s gap is seen: 60 / 300 = 0


def _reference_attention(att, q_in, kv_in, pos_k, pos_v, int_k, int_v, r, mask) -> torch.Tensor:
    """Eq. 4-5 written with the (B, L, L, D) interval embeddings the efficient form avoids."""
    D = q_in.shape[-1]
    H, dh = att.num_heads, D // att.num_heads
    w_q, w_k, w_v = att.qkv.weight.split([D, D, D])
    b_q, b_k, b_v = att.qkv.bias.split([D, D, D])
    rk, rv = int_k[r.long()], int_v[r.long()]  # (B, Lq, L, D)
    keys = (kv_in @ w_k.T + b_k + pos_k)[:, None] + rk  # (B, Lq, L, D)
    vals = (kv_in @ w_v.T + b_v + pos_v)[:, None] + rv  # (B, Lq, L, D)
    q = q_in @ w_q.T + b_q  # (B, Lq, D)
    out = []
    for h in range(H):
        s = slice(h * dh, (h + 1) * dh)
        e = torch.einsum("bid,bijd->bij", q[..., s], keys[..., s]) / dh**0.5
        a = e.masked_fill(~mask[:, 0], float("-inf")).softmax(-1)
        out.append(torch.einsum("bij,bijd->bid", a, vals[..., s]))
    return att.out(torch.cat(out, dim=-1))


@pytest.mark.parametrize("heads", [1, 2])
def test_efficient_attention_equals_the_papers_equations(heads: int) -> None:
    m = _model(num_heads=heads)
    for emb in (m.pos_k, m.pos_v, m.int_k, m.int_v):  # not near zero, so every term counts
        torch.nn.init.normal_(emb.weight)
    items = torch.randint(1, 101, (3, 12))
    items[0, :4] = 0
    times = _times(3, 12)
    att = m.blocks[0].attn
    x = torch.randn(3, 12, 32)
    pos = torch.arange(20 - 12, 20)[None]
    args = (m.pos_k(pos), m.pos_v(pos), m.int_k.weight, m.int_v.weight, time_intervals(items, times, 16))
    from models.layers import attention_mask

    mask = attention_mask(items, causal=True)
    with torch.no_grad():
        got = att(x, x, *args, mask)
        want = _reference_attention(att, x, x, *args, mask)
    assert torch.allclose(got, want, atol=1e-4)


def test_causal_future_items_and_times_do_not_change_past_outputs() -> None:
    m = _model()
    items, times = torch.randint(1, 101, (3, 12)), _times(3, 12)
    t = 6
    items2, times2 = items.clone(), times.clone()
    items2[:, t + 1 :] = torch.randint(1, 101, (3, 12 - t - 1))
    times2[:, t + 1 :] = times[:, t : t + 1] + 1  # a 1 s gap later on: a finer r_u for later rows only
    with torch.no_grad():
        a, b = m.hidden(items, times), m.hidden(items2, times2)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-3)


def test_times_change_the_user_vector() -> None:
    m = _model()
    for emb in (m.int_k, m.int_v):
        torch.nn.init.normal_(emb.weight)
    items, times = torch.randint(1, 101, (2, 10)), _times(2, 10)
    other = times.clone()
    other[:, -1] = other[:, -2] + 1  # the newest event 1 s after the one before: other intervals, same order
    spread = times[:, :1] + (times - times[:, :1]) * 7  # every interval x 7: r_u x 7 too
    with torch.no_grad():
        assert not torch.allclose(m(items, times), m(items, other), atol=1e-3)
        # intervals are relative and in units of the user's own r_u: a shift or a uniform
        # stretch of the timeline changes nothing (the personalised scaling of Sec. 3.2)
        assert torch.allclose(m(items, times), m(items, times + 86_400), atol=1e-6)
        assert torch.allclose(m(items, times), m(items, spread), atol=1e-6)


def test_left_padding_and_truncation_do_not_change_the_user_vector() -> None:
    m = _model()
    items, times = torch.randint(1, 101, (1, 7)), _times(1, 7)
    z = torch.zeros(1, 5, dtype=torch.long)
    long_items, long_times = torch.randint(1, 101, (2, 35)), _times(2, 35, seed=1)
    with torch.no_grad():
        assert torch.allclose(m(items, times), m(torch.cat([z, items], 1), torch.cat([z, times], 1)), atol=1e-5)
        assert torch.allclose(m(long_items, long_times), m(long_items[:, -20:], long_times[:, -20:]), atol=1e-6)


@pytest.mark.parametrize("positions", ["recency", "absolute"])
def test_user_vector_from_last_query_only_equals_full_computation(positions: str) -> None:
    m = _model(positions=positions)
    items, times = torch.randint(0, 101, (5, 15)), _times(5, 15)
    with torch.no_grad():
        assert torch.allclose(m(items, times), m.hidden(items, times)[:, -1], atol=1e-5)
        assert torch.allclose(m.score(items, times), m(items, times) @ m.item_vectors().T)
    assert m.score(items, times).shape == (5, 101)


def test_config_refuses_a_bad_interval_clip_or_position_scheme() -> None:
    with pytest.raises(ValueError, match="max_interval"):
        TiSASRecConfig(num_items=10, max_interval=0)
    with pytest.raises(ValueError, match="positions"):
        TiSASRecConfig(num_items=10, positions="sinusoid")


def test_training_batches_carry_the_input_events_times() -> None:
    seqs = [np.arange(1, 9), np.arange(3, 6), np.array([7])]  # the last is too short to train on
    times = [np.arange(8) * 100 + 5, np.array([10, 20, 30]), np.array([1])]
    rng = np.random.default_rng(0)
    (b,) = list(shifted_batches(seqs, 4, rng, torch.device("cpu"), max_len=5, times=times))
    for items, tseq in zip(b["item_seq"].tolist(), b["time_seq"].tolist(), strict=True):
        n = sum(i != 0 for i in items)
        u = 0 if n == 5 else 1
        real = [t for i, t in zip(items, tseq, strict=True) if i != 0]
        assert [t for i, t in zip(items, tseq, strict=True) if i == 0] == [0] * (5 - n)
        # each item's own time; the target's (one step later) is never there
        assert real == [int(times[u][list(seqs[u]).index(i)]) for i in items if i != 0]
        assert int(times[u][-1]) not in real
    # the same rng gives the same rows with and without times (times only add a tensor)
    (plain,) = list(shifted_batches(seqs, 4, np.random.default_rng(0), torch.device("cpu"), max_len=5))
    assert torch.equal(plain["item_seq"], b["item_seq"]) and "time_seq" not in plain


def test_a_training_step_reaches_the_interval_tables() -> None:
    m = _model().train()
    items, times = torch.randint(1, 101, (4, 12)), _times(4, 12)
    m.hidden(items, times).pow(2).sum().backward()
    for emb in (m.int_k, m.int_v, m.pos_k, m.pos_v):
        assert emb.weight.grad is not None and float(emb.weight.grad.abs().sum()) > 0
