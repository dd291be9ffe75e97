from __future__ import annotations

import pytest
import torch

from models.layers import absolute_positions
from models.sasrec import SASRec, SASRecConfig


def _model(**kw) -> SASRec:
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(num_items=100, max_len=20, dim=32, num_layers=2, num_heads=2, **kw))
    return m.eval()


@pytest.mark.parametrize(("norm_first", "positions"), [(True, "recency"), (False, "recency"), (True, "absolute")])
def test_causal_future_items_do_not_change_past_outputs(norm_first: bool, positions: str) -> None:
    m = _model(norm_first=norm_first, positions=positions)
    seq = torch.randint(1, 101, (3, 12))
    changed = seq.clone()
    t = 6
    changed[:, t + 1 :] = torch.randint(1, 101, (3, 12 - t - 1))
    with torch.no_grad():
        a, b = m.hidden(seq), m.hidden(changed)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-3)  # the test can fail


@pytest.mark.parametrize("positions", ["recency", "absolute"])
def test_left_padding_does_not_change_user_vector(positions: str) -> None:
    m = _model(positions=positions)
    seq = torch.randint(1, 101, (1, 7))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], dim=1)
    with torch.no_grad():
        assert torch.allclose(m(seq), m(padded), atol=1e-5)


@pytest.mark.parametrize("positions", ["recency", "absolute"])
def test_long_history_is_truncated_to_max_len(positions: str) -> None:
    m = _model(positions=positions)
    seq = torch.randint(1, 101, (2, 35))
    with torch.no_grad():
        assert torch.allclose(m(seq), m(seq[:, -20:]), atol=1e-6)


def test_absolute_positions_count_from_the_oldest_item() -> None:
    seq = torch.tensor([[0, 0, 7, 3, 9], [4, 5, 6, 7, 8]])
    assert absolute_positions(seq).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    # the two schemes give different user vectors for a short history (the option is live)
    a, r = _model(positions="absolute"), _model(positions="recency")
    with torch.no_grad():
        assert not torch.allclose(a(seq[:1, 2:]), r(seq[:1, 2:]), atol=1e-3)


def test_unknown_position_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="positions"):
        SASRecConfig(num_items=10, positions="sinusoid")


def test_small_normal_init() -> None:
    m = _model(init_std=0.02)
    assert abs(float(m.blocks[0].attn.qkv.weight.detach().std()) - 0.02) < 0.005


def test_shapes_and_score_contract() -> None:
    m = _model()
    seq = torch.randint(0, 101, (4, 9))
    seq[:, -1] = 5
    with torch.no_grad():
        assert m(seq).shape == (4, 32)
        assert m.item_vectors().shape == (101, 32)
        assert torch.allclose(m.score(seq), m(seq) @ m.item_vectors().T)


@pytest.mark.parametrize(("norm_first", "positions"), [(True, "recency"), (False, "recency"), (True, "absolute")])
def test_user_vector_from_last_query_only_equals_full_computation(norm_first: bool, positions: str) -> None:
    m = _model(norm_first=norm_first, positions=positions)
    seq = torch.randint(0, 101, (5, 15))
    with torch.no_grad():
        assert torch.allclose(m(seq), m.hidden(seq)[:, -1], atol=1e-5)
