from __future__ import annotations

import torch

from models.bert4rec import BERT4Rec, BERT4RecConfig


def _model(max_len: int = 20) -> BERT4Rec:
    torch.manual_seed(0)
    return BERT4Rec(BERT4RecConfig(num_items=100, max_len=max_len, dim=32, num_layers=2, num_heads=2)).eval()


def test_forward_appends_mask_and_reads_its_output() -> None:
    m = _model()
    seq = torch.randint(1, 101, (3, 9))
    manual = torch.cat([seq, torch.full((3, 1), m.mask_token)], dim=1)
    with torch.no_grad():
        expected = m.head(m.encode(manual)[:, -1])
        assert torch.allclose(m(seq), expected, atol=1e-6)
        # Not the output at the last history item: the [mask] position is what is read.
        assert not torch.allclose(m(seq), m.head(m.encode(seq)[:, -1]), atol=1e-3)


def test_full_history_drops_oldest_item() -> None:
    m = _model(max_len=20)
    seq = torch.randint(1, 101, (2, 20))  # full: 20 items + [mask] would not fit
    with torch.no_grad():
        assert torch.allclose(m(seq), m(seq[:, 1:]), atol=1e-6)
        longer = torch.cat([torch.randint(1, 101, (2, 13)), seq], dim=1)
        assert torch.allclose(m(longer), m(seq), atol=1e-6)
        manual = torch.cat([seq[:, 1:], torch.full((2, 1), m.mask_token)], dim=1)
        assert torch.allclose(m(seq), m.head(m.encode(manual)[:, -1]), atol=1e-6)


def test_bidirectional_earlier_output_sees_later_items() -> None:
    m = _model()
    seq = torch.randint(1, 101, (2, 10))
    changed = seq.clone()
    changed[:, -1] = (seq[:, -1] % 100) + 1
    with torch.no_grad():
        a, b = m.encode(seq), m.encode(changed)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)  # position 0 attends to the last item


def test_left_padding_does_not_change_user_vector() -> None:
    m = _model()
    seq = torch.randint(1, 101, (1, 7))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), seq], dim=1)
    with torch.no_grad():
        assert torch.allclose(m(seq), m(padded), atol=1e-5)


def test_score_is_eq7_logit_with_bias_dimension() -> None:
    m = _model()
    with torch.no_grad():
        m.out_bias.normal_()
        seq = torch.randint(1, 101, (4, 6))
        h = m.encode(m.append_mask(seq))[:, -1]
        z = torch.nn.functional.gelu(m.out_proj(h))
        logits = z @ m.item_emb.weight[:101].T + m.out_bias  # softmax argument of eq. 7
        assert m(seq).shape == (4, 33) and m.item_vectors().shape == (101, 33)
        assert torch.allclose(m.score(seq), logits, atol=1e-5)
        assert torch.equal(m.item_vectors()[:, :32], m.item_emb.weight[:101])  # output table = input table
