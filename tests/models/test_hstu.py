from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.hstu import HSTU, HSTUCache, HSTUConfig, time_buckets


def _model(**kw) -> HSTU:
    torch.manual_seed(0)
    cfg = {"num_items": 100, "max_len": 30, "dim": 32, "num_layers": 2, "num_heads": 2, **kw}
    model = HSTU(HSTUConfig(**cfg)).eval()
    with torch.no_grad():  # trained-looking rab weights, so a wrong gather would show
        for layer in model.layers:
            layer.rab.pos_w.normal_(0.0, 0.5)
            if layer.rab.time_w is not None:
                layer.rab.time_w.normal_(0.0, 0.5)
    return model


def _times(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Non-decreasing unix seconds: repeats (gap 0), seconds, hours and weeks apart."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.tensor([0, 1, 40, 3_600, 90_000, 2_000_000])[torch.randint(0, 6, (batch, length), generator=g)]
    return 978_300_000 + gaps.cumsum(dim=1)


def _items(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 101, (batch, length), generator=torch.Generator().manual_seed(seed))


def _reference(model: HSTU, items: list[int], times: list[int] | None) -> torch.Tensor:
    """Eq. 1-3 written out per query, head and key, for one history (no padding)."""
    cfg = model.cfg
    L, H, dqk, dv = len(items), cfg.num_heads, cfg.dqk, cfg.dv
    x = [model.item_emb.weight[it] * math.sqrt(cfg.dim) + model.pos_emb.weight[i] for i, it in enumerate(items)]
    for layer in model.layers:
        rows = [F.silu(layer.f1(F.layer_norm(xi, (cfg.dim,), eps=1e-6))) for xi in x]
        u = [r[: H * dv] for r in rows]
        v = [r[H * dv : 2 * H * dv] for r in rows]
        q = [r[2 * H * dv : 2 * H * dv + H * dqk] for r in rows]
        k = [r[2 * H * dv + H * dqk :] for r in rows]
        out = []
        for i in range(L):
            heads = []
            for h in range(H):
                acc = torch.zeros(dv)
                for j in range(i + 1):
                    s = q[i][h * dqk : (h + 1) * dqk] @ k[j][h * dqk : (h + 1) * dqk] + layer.rab.pos_w[i - j]
                    if times is not None:
                        gap = max(abs(times[i] - times[j]), 1)
                        s = s + layer.rab.time_w[min(math.floor(math.log(gap) / 0.301), cfg.time_buckets)]
                    acc = acc + F.silu(s) * v[j][h * dv : (h + 1) * dv] / cfg.max_len
                heads.append(acc)
            av = F.layer_norm(torch.cat(heads), (H * dv,), eps=1e-6)
            out.append(layer.f2(av * u[i]) + x[i])
        x = out
    return F.normalize(x[-1], dim=0) / cfg.temperature


@pytest.mark.parametrize("timed", [True, False])
def test_forward_equals_the_equations_written_out(timed: bool) -> None:
    model = _model(max_len=12, dim=8, num_heads=2, time_buckets=40 if timed else 0)
    items, times = _items(1, 9), _times(1, 9)
    with torch.no_grad():
        got = model(items, times if timed else None)[0]
        want = _reference(model, items[0].tolist(), times[0].tolist() if timed else None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_time_buckets_are_log_spaced_gaps_clamped_to_the_last_bucket() -> None:
    t = torch.tensor([[0, 1, 2, 3, 60, 3_600, 86_400, 10**9]])
    got = time_buckets(t[:, -1:] * 0, t, 40)[0, 0]  # gaps from 0 to each time
    # floor(ln(max(dt, 1)) / 0.301): 0 and 1 s -> 0, 2 s -> 2, 3 s -> 3, a minute 13, an hour 27,
    # a day 37, 30 years 68 -> clamped to 40
    assert got.tolist() == [0, 0, 2, 3, 13, 27, 37, 40]
    assert time_buckets(t, t, 128)[0].T.tolist() == time_buckets(t, t, 128)[0].tolist()  # |dt|: symmetric


def test_left_padding_and_over_long_histories_do_not_change_the_user_vector() -> None:
    model = _model(time_buckets=128)
    items, times = _items(1, 12), _times(1, 12)
    pad = torch.zeros(1, 5, dtype=torch.long)
    long_items, long_times = torch.cat([_items(1, 40, seed=1), items], 1), torch.cat([_times(1, 40) - 10**8, times], 1)
    with torch.no_grad():
        ref = model(items, times)
        torch.testing.assert_close(model(torch.cat([pad, items], 1), torch.cat([pad, times], 1)), ref)
        # a batch of rows of different lengths: each row as alone
        other, other_t = _items(1, 17, seed=3), _times(1, 17, seed=3)
        batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), items], 1), other])
        batch_t = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), times], 1), other_t])
        both = model(batch, batch_t)
        torch.testing.assert_close(both[:1], ref)
        torch.testing.assert_close(both[1:], model(other, other_t))
        # longer than max_len: the newest max_len events
        torch.testing.assert_close(model(long_items, long_times), model(long_items[:, -30:], long_times[:, -30:]))


def test_causal_a_later_event_never_changes_an_earlier_state() -> None:
    model = _model(time_buckets=128)
    items, times = _items(2, 15), _times(2, 15)
    changed_items, changed_times = items.clone(), times.clone()
    changed_items[:, 10:] = _items(2, 5, seed=9)
    changed_times[:, 10:] += 12_345
    with torch.no_grad():
        a, b = model.hidden(items, times), model.hidden(changed_items, changed_times)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-2


def test_times_enter_through_the_bias_only_when_the_model_has_time_buckets() -> None:
    timed, plain = _model(time_buckets=128), _model(time_buckets=0)
    items, times = _items(1, 10), _times(1, 10)
    flat = times[:, :1] + torch.arange(10)  # every gap one second
    assert timed.uses_times and not plain.uses_times
    with torch.no_grad():
        assert (timed(items, times) - timed(items, flat)).abs().max() > 1e-3
        torch.testing.assert_close(plain(items), plain(items, times))  # no w^t: times are not read
        with pytest.raises(ValueError, match="event times"):
            timed(items)


def test_scores_are_cosines_over_the_temperature() -> None:
    model = _model(time_buckets=0, temperature=0.05)
    with torch.no_grad():
        u = model(_items(3, 8))
        table = model.item_vectors()
    torch.testing.assert_close(u.norm(dim=-1), torch.full((3,), 20.0))
    torch.testing.assert_close(table[1:].norm(dim=-1), torch.ones(100))
    assert model.item_vectors()[0].abs().max() == 0  # padding row


@pytest.mark.parametrize("timed", [True, False])
@pytest.mark.parametrize("splits", [[30], [1] * 30, [7, 1, 1, 13, 8], [29, 1]])
def test_incremental_encoding_equals_a_full_pass(timed: bool, splits: list[int]) -> None:
    """A history appended in chunks (one event at a time, or several) through the cache gives the
    user vector of a full pass over the history so far, after every chunk, with event times."""
    model = _model(time_buckets=128 if timed else 0)
    items, times = _items(3, 30), _times(3, 30)
    cache, end = model.empty_cache(3), 0
    with torch.no_grad():
        for m in splits:
            new_t = times[:, end : end + m] if timed else None
            cache, vec = model.extend(cache, items[:, end : end + m], new_t)
            end += m
            full = model(items[:, :end], times[:, :end] if timed else None)
            assert (vec - full).abs().max() <= 1e-5
            assert cache.length == end
    # the cache holds exactly what the full pass computes at every past position and layer
    assert cache.k.shape == (2, 3, 30, 32) and cache.v.shape == (2, 3, 30, 32)
    if timed:
        assert torch.equal(cache.times, times)


def test_extend_refuses_to_slide_the_window() -> None:
    model = _model(time_buckets=128)
    items, times = _items(1, 31), _times(1, 31)
    with torch.no_grad():
        cache, _ = model.extend(model.empty_cache(), items[:, :30], times[:, :30])
        with pytest.raises(ValueError, match="rebuild"):
            model.extend(cache, items[:, 30:], times[:, 30:])
        with pytest.raises(ValueError, match="event times"):
            model.extend(model.empty_cache(), items[:, :3])


def test_cache_bytes_per_user() -> None:
    model = _model(time_buckets=128, max_len=200, dim=50, num_heads=1)
    with torch.no_grad():
        cache, _ = model.extend(model.empty_cache(), _items(1, 200), _times(1, 200))
    assert isinstance(cache, HSTUCache)
    # 2 layers x 200 events x (50 + 50) floats, plus 200 int64 times
    assert cache.nbytes() == 2 * 200 * 100 * 4 + 200 * 8
    assert cache.nbytes(torch.float16) == 2 * 200 * 100 * 2 + 200 * 8


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="positions"):
        HSTUConfig(num_items=5, positions="recency")
    with pytest.raises(ValueError, match="time_buckets"):
        HSTUConfig(num_items=5, time_buckets=-1)
    with pytest.raises(ValueError, match="divisible"):
        HSTUConfig(num_items=5, dim=50, num_heads=3)
    cfg = HSTUConfig(num_items=5, dim=50, num_heads=2, attn_dim=25, linear_dim=40)
    assert (cfg.dqk, cfg.dv) == (25, 40)
