"""Shrinking a warm-start source toward a fresh initialisation, and writing it as a checkpoint `--init` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.warm_start import (
    Source,
    WarmStartError,
    is_warm_start_source,
    load_source,
    save_source,
    shrink_toward_init,
)
from training.zoo import build_model

CFG = {"max_len": 12, "dim": 8, "num_layers": 1, "num_heads": 1}
ITEMS = ["a", "b", "c", "d"]


def trained() -> Source:
    torch.manual_seed(1)
    m = build_model("sasrec", len(ITEMS), CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(mean=3.0)  # far from any initialisation
    return Source(Path("src"), "sasrec", m.cfg.to_dict(), ITEMS, m.state_dict())


def fresh(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model("sasrec", len(ITEMS), CFG).state_dict()


def test_keep_interpolates_between_the_source_and_a_fresh_init() -> None:
    src, init = trained(), fresh()
    same = shrink_toward_init(src, 1.0)
    back = shrink_toward_init(src, 0.0)
    half = shrink_toward_init(src, 0.5)
    for name, w in src.state_dict.items():
        torch.testing.assert_close(same.state_dict[name], w, rtol=0, atol=0)
        torch.testing.assert_close(back.state_dict[name], init[name].to(w.dtype))
        torch.testing.assert_close(half.state_dict[name], (w + init[name]) / 2)
    assert half.item_ids == ITEMS and half.kind == "sasrec"
    with pytest.raises(WarmStartError, match=r"keep must be in \[0, 1\]"):
        shrink_toward_init(src, 1.5)


def test_a_saved_source_is_a_warm_start_checkpoint(tmp_path: Path) -> None:
    src = shrink_toward_init(trained(), 0.7)
    path = save_source(src, tmp_path / "v1-keep0.7.pt")
    assert is_warm_start_source(path)
    back = load_source(path)
    assert (back.kind, back.item_ids, back.model_config) == (src.kind, src.item_ids, src.model_config)
    for name, w in src.state_dict.items():
        torch.testing.assert_close(back.state_dict[name], w, rtol=0, atol=0)
