"""LRURec end to end: a few training steps on ML-100K, a bundle whose step graph the service serves
incrementally, and that step graph, fed one event at a time from a zero state, equal to model.onnx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support.parity import cache_outcomes
from training.data import SeqData, leave_one_out
from training.export import export_bundle
from training.train import load_checkpoint, train

TINY_MODEL = {"max_len": 50, "dim": 16, "state_dim": 16, "num_layers": 2}
TINY_TRAIN = {"epochs": 1, "batch_size": 64, "max_users": 300, "num_threads": 1}


@pytest.fixture(scope="module")
def run(ml100k: SeqData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lrurec-run")
    train("lrurec", ml100k, out, model_overrides=TINY_MODEL, train_overrides=TINY_TRAIN, progress=False)
    return out


@pytest.fixture(scope="module")
def bundle(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(run / "best.pt", tmp_path_factory.mktemp("lrurec-art"), name="tiny-lrurec", program=False)


def test_bundle_offers_the_recurrent_state(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    inc = m["incremental"]
    assert m["model"] == "lrurec"
    assert inc["kind"] == "rnn_state" and inc["file"] == "step.onnx" and "step.onnx" in m["files"]
    assert inc["inputs"] == ["state", "item_seq"] and inc["outputs"] == ["state_out", "user_vec"]
    assert inc["state_shape"] == [2, 32]  # (layers, 2N): each complex channel as (Re, Im)
    assert inc["parity_max_abs_diff"] < 1e-5
    assert max(m["parity_max_abs_diff"].values()) < 1e-5  # ONNX, TorchScript, torch.export vs eager
    assert m["dim"] == 17  # d + 1: the item bias folded in


def test_step_graph_one_event_at_a_time_equals_model_onnx_on_real_histories(bundle: Path, ml100k: SeqData) -> None:
    """100 ML-100K test histories (newest max_len events): the same top 10 and scores within 1e-5."""
    m = json.loads((bundle / "manifest.json").read_text())
    layers, hid = m["incremental"]["state_shape"]
    full = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(bundle / "step.onnx"), providers=["CPUExecutionProvider"])
    items = np.load(bundle / "item_vectors.npy")  # (N, D)
    split = leave_one_out(ml100k)
    worst = 0.0
    for hist in split.test_hist[:100]:
        h = np.asarray(hist[-m["max_len"] :], dtype=np.int64)
        want = full.run(["user_vec"], {"item_seq": h[None]})[0] @ items.T  # (1, N)
        state = np.zeros((layers, 1, hid), np.float32)
        for item in h:
            state, vec = step.run(["state_out", "user_vec"], {"state": state, "item_seq": np.array([[item]])})
        got = vec @ items.T
        worst = max(worst, float(np.abs(got - want).max()))
        assert list(np.argsort(-got[0], kind="stable")[:10]) == list(np.argsort(-want[0], kind="stable")[:10])
    assert worst < 1e-5


def test_served_incrementally_like_the_offline_model(bundle: Path, run: Path) -> None:
    """The service builds the user's state, then advances it by one new event (no full recompute),
    and serves the list the trained model ranks for the whole history."""
    model, _ = load_checkpoint(run / "best.pt")
    with TestClient(create_app(Settings(bundles=[bundle], api_key="k"))) as client:
        b = client.app.state.seqrec.registry.get("lrurec")
        history = b.item_ids[3:40]
        events = [{"user_id": "u", "item_id": i, "timestamp": 100 + n} for n, i in enumerate(history)]
        auth = {"X-API-Key": "k"}
        assert client.post("/events", json={"events": events[:-1]}, headers=auth).status_code == 200
        assert client.get("/recommend/u", params={"k": 10}).status_code == 200
        assert client.post("/events", json={"events": events[-1:]}, headers=auth).status_code == 200
        r = client.get("/recommend/u", params={"k": 10})
        assert r.status_code == 200 and r.json()["source"] == "model"
        served = [x["item_id"] for x in r.json()["items"]]
        seen = cache_outcomes(client)
        assert seen.get("rebuild") == 1.0 and seen.get("advance") == 1.0, seen

    seq = torch.as_tensor(np.array([[b.index_of[i] for i in history]], dtype=np.int64))
    with torch.no_grad():
        scores = model.score(seq)[0, 1 : model.num_items + 1].numpy().copy()
    scores[[b.index_of[i] - 1 for i in history]] = -np.inf  # seen items are not recommended
    offline = [b.item_ids[r] for r in np.argsort(-scores, kind="stable")[:10]]
    assert served[:8] == offline[:8]  # float ties at the tail may swap neighbours
