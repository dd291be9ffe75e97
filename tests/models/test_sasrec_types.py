"""SASRec reading event types: off is the model as before, on adds a type embedding per event."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.sasrec import SASRec, SASRecConfig
from training.ablation import reference
from training.zoo import build_model


def _model(num_types: int = 0, positions: str = "recency", seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    cfg = SASRecConfig(num_items=30, max_len=8, dim=16, num_layers=2, num_heads=2, positions=positions)
    cfg.num_types = num_types
    return SASRec(cfg).eval()


SEQ = torch.tensor([[0, 0, 3, 7, 9, 2], [4, 5, 6, 7, 8, 9]])  # (2, 6), the first row left-padded


def test_types_off_is_the_model_as_before() -> None:
    plain = _model()
    assert plain.type_emb is None and not plain.reads_types
    assert not any("type" in k for k in plain.state_dict())
    # A checkpoint written before the field existed (its config has no num_types) loads unchanged.
    old_cfg = {k: v for k, v in plain.cfg.to_dict().items() if k not in ("num_items", "num_types")}
    again = build_model("sasrec", 30, old_cfg).eval()
    again.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(again(SEQ), plain(SEQ))
    # The same seed draws the same initial weights as a config without types.
    torch.manual_seed(0)
    fresh = SASRec(SASRecConfig(num_items=30, max_len=8, dim=16, num_layers=2, num_heads=2)).eval()
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), plain.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="num_types"):
        SASRecConfig(num_items=3, num_types=-1)


@pytest.mark.parametrize("positions", ["recency", "absolute"])
def test_the_type_changes_the_vector_and_padding_types_do_not(positions: str) -> None:
    m = _model(num_types=3, positions=positions)
    assert m.reads_types and m.type_emb is not None and m.type_emb.weight.shape == (4, 16)
    types = torch.tensor([[0, 0, 1, 2, 3, 1], [1, 1, 2, 2, 3, 3]])
    with torch.no_grad():
        base = m(SEQ, types)  # (2, D)
        other = types.clone()
        other[0, 3] = 3  # one event of the first row as another type
        moved = m(SEQ, other)
        assert torch.allclose(moved[1], base[1]) and not torch.allclose(moved[0], base[0])
        pad = types.clone()
        pad[0, :2] = 2  # a type where items pad changes nothing
        assert torch.allclose(m(SEQ, pad), base)
        # No types: every event reads as the first type (id 1), as the service does.
        assert torch.allclose(m(SEQ), m(SEQ, (SEQ != 0).long()))
        # Causal: a newer event's type leaves the older positions' states alone.
        h, h2 = m.hidden(SEQ, types), m.hidden(SEQ, other)
        assert torch.allclose(h[0, :3], h2[0, :3]) and not torch.allclose(h[0, 3:], h2[0, 3:])
        # A history longer than max_len keeps its newest max_len events and their types alike.
        long_items = torch.arange(1, 13)[None]  # (1, 12)
        long_types = torch.tensor([[1, 2, 3] * 4])
        assert torch.allclose(m(long_items, long_types), m(long_items[:, -8:], long_types[:, -8:]))
    with pytest.raises(ValueError, match="type_seq"):
        m(SEQ, types[:, 1:])


def test_explanations_read_every_event_as_the_first_type() -> None:
    m = _model(num_types=3)
    window = np.array([4, 9, 2, 7, 11, 3, 5], dtype=np.int64)
    with torch.no_grad():
        got = m.ablations(torch.as_tensor(window[None]), torch.arange(4)).numpy()
    want = reference(m, window, 4)[1:]  # forward without types: every event the first type
    assert np.allclose(got, want, atol=1e-5)
