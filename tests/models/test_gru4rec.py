from __future__ import annotations

import pytest
import torch

from models.gru4rec import GRU4Rec, GRU4RecConfig


def _model(**kw) -> GRU4Rec:
    torch.manual_seed(0)
    return GRU4Rec(GRU4RecConfig(num_items=100, max_len=20, dim=16, **kw)).eval()


@pytest.mark.parametrize("embedding", ["shared", "separate"])
def test_left_padding_does_not_change_user_vector(embedding: str) -> None:
    m = _model(embedding=embedding, num_layers=2)
    with torch.no_grad():
        m.gru.bias_ih_l0.normal_()  # non-zero biases: a padded step would change h if it ran
        seqs = [torch.randint(1, 101, (n,)) for n in (1, 4, 9)]
        batch = torch.zeros(3, 9, dtype=torch.long)
        for i, s in enumerate(seqs):
            batch[i, 9 - len(s) :] = s
        out = m(batch)
        for i, s in enumerate(seqs):
            assert torch.allclose(out[i], m(s[None])[0], atol=1e-6)


def test_hidden_matches_step_by_step_recurrence() -> None:
    m = _model(num_layers=2)
    seq = torch.randint(1, 101, (3, 7))
    with torch.no_grad():
        h, outs = None, []
        for t in range(7):
            o, h = m.step(seq[:, t], h)
            outs.append(o)
        assert torch.allclose(m.hidden(seq), torch.stack(outs, 1), atol=1e-5)


def test_causal_and_truncated_to_max_len() -> None:
    m = _model()
    seq = torch.randint(1, 101, (2, 30))
    with torch.no_grad():
        assert torch.allclose(m(seq), m(seq[:, -20:]), atol=1e-6)
        changed = seq.clone()
        changed[:, -1] = (seq[:, -1] % 100) + 1
        assert torch.allclose(m.hidden(seq)[:, :-1], m.hidden(changed)[:, :-1], atol=1e-6)


def test_score_has_output_bias_and_shared_embedding() -> None:
    m = _model()
    with torch.no_grad():
        m.item_bias.normal_()
        seq = torch.randint(1, 101, (4, 5))
        h = m.hidden(seq)[:, -1]
        assert torch.allclose(m.score(seq), h @ m.item_out.weight.T + m.item_bias, atol=1e-5)
    assert m.item_in is None  # the GRU input is the output table W_y itself
