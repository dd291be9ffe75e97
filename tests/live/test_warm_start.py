"""Warm start: item rows matched by external id, bit for bit, with items added and removed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.warm_start import ITEM_TENSORS, Source, WarmStartError, apply, load_source, model_overrides
from training.zoo import build_model

SMALL = {
    "sasrec": {"max_len": 12, "dim": 8, "num_layers": 1, "num_heads": 1},
    "bert4rec": {"max_len": 12, "dim": 8, "num_layers": 1, "num_heads": 2},
    "gru4rec": {"max_len": 12, "dim": 8, "num_layers": 1, "embedding": "separate", "emb_dim": 6},
    "unisrec": {"max_len": 12, "dim": 8, "num_layers": 1, "num_heads": 2, "mode": "transductive", "text_dim": 16},
}
OLD = ["10", "20", "30", "40", "50"]
NEW = ["05", "20", "40", "50", "60", "70"]  # 10 and 30 gone, 05 60 70 new; indices all shift


def _source(kind: str) -> tuple[Source, torch.nn.Module]:
    torch.manual_seed(0)
    m = build_model(kind, len(OLD), SMALL[kind])
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()  # every row distinct, so a wrong row cannot match by accident
    return Source(Path("src"), kind, m.cfg.to_dict(), OLD, m.state_dict()), m


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec", "gru4rec", "unisrec"])
def test_rows_follow_the_item_ids(kind: str) -> None:
    src, old = _source(kind)
    model = build_model(kind, len(NEW), model_overrides(src, kind, None))
    report = apply(model, kind, src, NEW)
    assert (report.kept, report.added, report.dropped) == (3, 3, 2)
    new_sd, old_sd = model.state_dict(), old.state_dict()
    item_names = [n for n in ITEM_TENSORS[kind] if n in new_sd]
    assert item_names
    for name in item_names:
        for item in ("20", "40", "50"):
            assert torch.equal(new_sd[name][NEW.index(item) + 1], old_sd[name][OLD.index(item) + 1]), (name, item)
        kept = old_sd[name][[OLD.index(i) + 1 for i in ("20", "40", "50")]]
        for item in ("05", "60", "70"):
            expect = torch.zeros_like(kept[0]) if kind == "unisrec" else kept.mean(0)
            assert torch.allclose(new_sd[name][NEW.index(item) + 1], expect), (name, item)
        assert torch.equal(new_sd[name][0], old_sd[name][0])
    if kind == "bert4rec":  # the [mask] row travels with the table's end
        assert torch.equal(new_sd["item_emb.weight"][-1], old_sd["item_emb.weight"][-1])
    for name, v in new_sd.items():
        if name not in ITEM_TENSORS[kind] and name not in ("text_emb", "trained"):
            assert torch.equal(v, old_sd[name]), name
    if kind == "unisrec":  # filled from the new data by the model's setup, not copied
        assert new_sd["text_emb"].shape[0] == len(NEW) + 1


def test_incompatible_sources_are_refused() -> None:
    src, _ = _source("sasrec")
    with pytest.raises(WarmStartError, match="holds a sasrec model; it cannot initialise bert4rec"):
        model_overrides(src, "bert4rec", None)
    wide = build_model("sasrec", len(NEW), {**SMALL["sasrec"], "dim": 16})
    with pytest.raises(WarmStartError, match="does not fit"):
        apply(wide, "sasrec", src, NEW)
    strangers = build_model("sasrec", 2, SMALL["sasrec"])
    with pytest.raises(WarmStartError, match="no item of the new data"):
        apply(strangers, "sasrec", src, ["x", "y"])


def test_bundle_and_checkpoint_sources_agree(ml100k, tmp_path: Path) -> None:
    """A real run on ML-100K: its best.pt and its exported bundle hold the same weights and ids."""
    from training.export import export_bundle
    from training.train import train

    run = tmp_path / "run"
    train(
        "sasrec",
        ml100k,
        run,
        {"max_len": 20, "dim": 8, "num_layers": 1},
        {"epochs": 1, "max_users": 200},
        progress=False,
    )
    bundle = export_bundle(run / "best.pt", tmp_path / "art", name="b", program=False)
    a, b = load_source(run / "best.pt"), load_source(bundle)
    assert a.kind == b.kind == "sasrec" and a.item_ids == b.item_ids == json.loads(
        (bundle / "item_ids.json").read_text()
    )
    assert set(a.state_dict) == set(b.state_dict)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k


def test_train_init_carries_rows_and_refuses_other_kinds(ml100k, tmp_path: Path) -> None:
    """`train(init=...)` on data with items removed: the new run's table starts from the old rows."""
    from training.data.preprocess import SeqData
    from training.train import load_checkpoint, train

    over = {"max_len": 20, "dim": 8, "num_layers": 1}
    train("sasrec", ml100k, tmp_path / "a", over, {"epochs": 1, "max_users": 300}, progress=False)
    # Drop the first 50 items from the data: every remaining item's index moves by 50.
    keep = ml100k.items > 50
    lens = np.add.reduceat(keep, ml100k.offsets[:-1])
    offsets = np.concatenate([[0], np.cumsum(lens)])
    data = SeqData("shifted", ml100k.user_ids, ml100k.item_ids[50:], offsets, ml100k.items[keep] - 50, None)
    src = load_source(tmp_path / "a" / "best.pt")
    # lr 0: training cannot move a weight, so the result is exactly the warm start.
    result = train(
        "sasrec",
        data,
        tmp_path / "b",
        None,
        {"epochs": 1, "max_users": 50, "lr": 0.0},
        progress=False,
        init=tmp_path / "a" / "best.pt",
    )
    model, _ = load_checkpoint(result.run_dir / "best.pt")
    emb = model.state_dict()["item_emb.weight"]
    old = src.state_dict["item_emb.weight"]
    assert torch.equal(emb[1:], old[51:])
    assert "50 dropped" in json.loads((result.run_dir / "final.json").read_text())["warm_start"]
    with pytest.raises(WarmStartError, match="holds a sasrec model"):
        train("gru4rec", data, tmp_path / "c", None, {"epochs": 1}, progress=False, init=tmp_path / "a" / "best.pt")
    with pytest.raises(WarmStartError, match="does not fit"):
        train(
            "sasrec", data, tmp_path / "d", {"dim": 16}, {"epochs": 1}, progress=False, init=tmp_path / "a" / "best.pt"
        )
    assert not (tmp_path / "d" / "metrics.jsonl").exists()  # refused before any training
