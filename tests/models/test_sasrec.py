from __future__ import annotations

import torch

from models.sasrec import SASRec, SASRecConfig


def _model(**kw) -> SASRec:
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(num_items=100, max_len=20, dim=32, num_layers=2, num_heads=2, **kw))
    return m.eval()


def test_causal_future_items_do_not_change_past_outputs() -> None:
    for norm_first in (True, False):
        m = _model(norm_first=norm_first)
        seq = torch.randint(1, 101, (3, 12))
        changed = seq.clone()
        t = 6
        changed[:, t + 1 :] = torch.randint(1, 101, (3, 12 - t - 1))
        with torch.no_grad():
            a, b = m.hidden(seq), m.hidden(changed)
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-3)  # the test can fail


def test_left_padding_does_not_change_user_vector() -> None:
    m = _model()
    seq = torch.randint(1, 101, (1, 7))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], dim=1)
    with torch.no_grad():
        assert torch.allclose(m(seq), m(padded), atol=1e-5)


def test_long_history_is_truncated_to_max_len() -> None:
    m = _model()
    seq = torch.randint(1, 101, (2, 35))
    with torch.no_grad():
        assert torch.allclose(m(seq), m(seq[:, -20:]), atol=1e-6)


def test_shapes_and_score_contract() -> None:
    m = _model()
    seq = torch.randint(0, 101, (4, 9))
    seq[:, -1] = 5
    with torch.no_grad():
        assert m(seq).shape == (4, 32)
        assert m.item_vectors().shape == (101, 32)
        assert torch.allclose(m.score(seq), m(seq) @ m.item_vectors().T)


def test_user_vector_from_last_query_only_equals_full_computation() -> None:
    for norm_first in (True, False):
        m = _model(norm_first=norm_first)
        seq = torch.randint(0, 101, (5, 15))
        with torch.no_grad():
            assert torch.allclose(m(seq), m.hidden(seq)[:, -1], atol=1e-5)
