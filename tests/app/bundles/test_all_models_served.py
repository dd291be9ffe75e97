"""Every model kind is served through the same bundle contract, with no model-specific code in app/.

Trains a tiny GRU4Rec and BERT4Rec next to the SASRec fixture, loads all three into one app,
and checks each `GET /recommend?model=<kind>` against the model's own eager PyTorch ranking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from training.data import SeqData
from training.export import export_bundle
from training.train import load_checkpoint, train

TINY = {
    "gru4rec": ({"dim": 16}, {"epochs": 1, "batch_size": 64, "max_users": 300, "extra": {"parallel": "padded"}}),
    "bert4rec": ({"max_len": 30, "dim": 16, "num_layers": 1}, {"epochs": 1, "batch_size": 64, "max_users": 300}),
}


@pytest.fixture(scope="module")
def bundles(
    synthetic: SeqData, bundle_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    out: dict[str, tuple[Path, Path]] = {}
    art = tmp_path_factory.mktemp("all-models")
    for kind, (model_over, train_over) in TINY.items():
        run = tmp_path_factory.mktemp(f"run-{kind}")
        train(kind, synthetic, run, model_overrides=model_over, train_overrides=train_over, progress=False)
        out[kind] = (run / "best.pt", export_bundle(run / "best.pt", art, name=f"tiny-{kind}", program=False))
    return out


@pytest.mark.parametrize("kind", list(TINY))
def test_each_kind_served_like_its_offline_model(kind: str, bundles, bundle_path: Path) -> None:
    ckpt = bundles[kind][0]
    paths = [bundle_path, *(b for _, b in bundles.values())]
    with TestClient(create_app(Settings(bundles=paths, api_key="k"))) as client:
        b = client.app.state.seqrec.registry.get(kind)
        history = b.item_ids[5:25]
        events = [{"user_id": "u", "item_id": i, "timestamp": 100 + n} for n, i in enumerate(history)]
        assert client.post("/events", json={"events": events}, headers={"X-API-Key": "k"}).status_code == 200
        r = client.get("/recommend/u", params={"k": 10, "model": kind})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == kind and body["source"] == "model"
        served = [x["item_id"] for x in body["items"]]

    model, _ = load_checkpoint(ckpt)
    seq = torch.as_tensor(np.array([[b.index_of[i] for i in history]], dtype=np.int64))
    with torch.no_grad():
        scores = model.score(seq)[0, 1 : model.num_items + 1].numpy().copy()
    scores[[b.index_of[i] - 1 for i in history]] = -np.inf  # seen items are not recommended
    offline = [b.item_ids[r] for r in np.argsort(-scores, kind="stable")[:10]]
    assert served[:8] == offline[:8]  # float ties at the tail may swap neighbours
