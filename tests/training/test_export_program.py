"""model.pt2 (torch.export) for every model kind: the program equals eager PyTorch.

Bundles built as fixtures elsewhere skip the program (`export_bundle(..., program=False)`): the
service never reads it and capturing it is most of a small model's export time, so each kind's
capture is checked once here (and the whole bundle's in tests/training/test_train_export.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.export import PARITY_TOL, export_program
from training.zoo import MODELS, build_model

TINY = {"dim": 16, "max_len": 12}
PER_KIND = {
    "sasrec": {"num_layers": 1, "num_heads": 1},
    "tisasrec": {"num_layers": 1, "num_heads": 1},
    "bert4rec": {"num_layers": 1, "num_heads": 1},
    "unisrec": {"num_layers": 1, "num_heads": 1, "text_dim": 32},
    "hstu": {"num_layers": 1, "num_heads": 1},
    "hrnn": {"user_dim": 8},
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_kind_exports_a_program_equal_to_eager(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(kind, 40, {**TINY, **PER_KIND.get(kind, {})}).eval()
    diff = export_program(model, tmp_path / "model.pt2")
    assert diff is not None, f"{kind}: torch.export could not capture the model"
    assert diff <= PARITY_TOL
    assert (tmp_path / "model.pt2").stat().st_size > 0
