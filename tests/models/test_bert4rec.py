from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.bert4rec import BERT4Rec, BERT4RecConfig
from training.export import check_parity, export_onnx, export_torchscript

SCHEMES = ["recency", "absolute"]


def _model(max_len: int = 20, positions: str = "recency") -> BERT4Rec:
    torch.manual_seed(0)
    cfg = BERT4RecConfig(num_items=100, max_len=max_len, dim=32, num_layers=2, num_heads=2, positions=positions)
    return BERT4Rec(cfg).eval()


def _eq7_logits(m: BERT4Rec, seq: torch.Tensor) -> torch.Tensor:
    """Eq. 7's softmax argument written out by hand, with the optional LayerNorm after the GELU."""
    h = m.encode(m.append_mask(seq))[:, -1]
    z = torch.nn.functional.gelu(m.out_proj(h))
    if m.cfg.head_norm:
        z = torch.nn.functional.layer_norm(z, (m.cfg.dim,), m.out_ln.weight, m.out_ln.bias, eps=1e-12)
    return z @ m.item_emb.weight[: m.num_items + 1].T + m.out_bias


@pytest.mark.parametrize("positions", SCHEMES)
def test_forward_appends_mask_and_reads_its_output(positions: str) -> None:
    m = _model(positions=positions)
    seq = torch.randint(1, 101, (3, 9))
    manual = torch.cat([seq, torch.full((3, 1), m.mask_token)], dim=1)
    with torch.no_grad():
        expected = m.head(m.encode(manual)[:, -1])
        assert torch.allclose(m(seq), expected, atol=1e-6)
        # Not the output at the last history item: the [mask] position is what is read.
        assert not torch.allclose(m(seq), m.head(m.encode(seq)[:, -1]), atol=1e-3)


@pytest.mark.parametrize("positions", SCHEMES)
def test_full_history_drops_oldest_item(positions: str) -> None:
    m = _model(max_len=20, positions=positions)
    seq = torch.randint(1, 101, (2, 20))  # full: 20 items + [mask] would not fit
    with torch.no_grad():
        assert torch.allclose(m(seq), m(seq[:, 1:]), atol=1e-6)
        longer = torch.cat([torch.randint(1, 101, (2, 13)), seq], dim=1)
        assert torch.allclose(m(longer), m(seq), atol=1e-6)
        manual = torch.cat([seq[:, 1:], torch.full((2, 1), m.mask_token)], dim=1)
        assert torch.allclose(m(seq), m.head(m.encode(manual)[:, -1]), atol=1e-6)


@pytest.mark.parametrize("positions", SCHEMES)
def test_bidirectional_earlier_output_sees_later_items(positions: str) -> None:
    m = _model(positions=positions)
    seq = torch.randint(1, 101, (2, 10))
    changed = seq.clone()
    changed[:, -1] = (seq[:, -1] % 100) + 1
    with torch.no_grad():
        a, b = m.encode(seq), m.encode(changed)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)  # position 0 attends to the last item


@pytest.mark.parametrize("positions", SCHEMES)
def test_left_padding_does_not_change_user_vector(positions: str) -> None:
    m = _model(positions=positions)
    seq = torch.randint(1, 101, (1, 7))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), seq], dim=1)
    with torch.no_grad():
        assert torch.allclose(m(seq), m(padded), atol=1e-5)


def test_score_is_eq7_logit_with_bias_dimension() -> None:
    m = _model()
    with torch.no_grad():
        m.out_bias.normal_()
        seq = torch.randint(1, 101, (4, 6))
        assert m(seq).shape == (4, 33) and m.item_vectors().shape == (101, 33)
        assert torch.allclose(m.score(seq), _eq7_logits(m, seq), atol=1e-5)
        assert torch.equal(m.item_vectors()[:, :32], m.item_emb.weight[:101])  # output table = input table


def test_absolute_positions_count_from_the_oldest_item_mask_included() -> None:
    a, r = _model(max_len=20, positions="absolute"), _model(max_len=20, positions="recency")  # same weights
    full, short = torch.randint(1, 101, (2, 19)), torch.randint(1, 101, (2, 6))
    with torch.no_grad():
        # 19 items + [mask] fill the window: positions 0..19 under both schemes.
        assert torch.allclose(a(full), r(full), atol=1e-6)
        # 6 items + [mask]: absolute 0..6, recency 13..19.
        assert not torch.allclose(a(short), r(short), atol=1e-4)
    with pytest.raises(ValueError, match="positions"):
        BERT4RecConfig(num_items=10, positions="sinusoid")


def test_head_norm_puts_layernorm_after_gelu_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = BERT4RecConfig(num_items=100, max_len=20, dim=32, num_layers=2, num_heads=2, head_norm=True)
    m = BERT4Rec(cfg).eval()
    with torch.no_grad():
        m.out_ln.weight.uniform_(0.5, 1.5)  # non-trivial affine part, so a missing LN would show
        m.out_ln.bias.normal_()
        seq = torch.randint(1, 101, (4, 6))
        assert torch.allclose(m.score(seq), _eq7_logits(m, seq), atol=1e-5)
        assert (m(seq)[:, :32] < -0.2).any()  # outside GELU's range: the LN re-centres the user vector
    assert isinstance(_model().out_ln, torch.nn.Identity)  # eq. 7 as printed stays the default
    example = torch.randint(1, 101, (2, 5))
    export_onnx(m, tmp_path / "m.onnx", example)
    export_torchscript(m, tmp_path / "m.pt", example)
    diffs = check_parity(m, tmp_path / "m.onnx", tmp_path / "m.pt", 100)
    assert max(diffs.values()) <= 1e-4
