"""HRNN through the unchanged bundle contract: ONNX and TorchScript equal eager PyTorch on real
multi-session histories, and the service's ranking from stored events equals the offline one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from app.bundles.bundle import Bundle
from app.main import create_app
from app.settings import Settings
from training.batching import pad_left
from training.data import SeqData
from training.export import export_bundle
from training.hrnn import user_session_protocol
from training.train import load_checkpoint, train

GAP = 1800
KEY = {"X-API-Key": "k"}


@pytest.fixture(scope="module")
def hrnn_run(ml100k: SeqData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data, split = user_session_protocol(ml100k, GAP, "user")
    run = tmp_path_factory.mktemp("hrnn-run")
    train(
        "hrnn",
        data,
        run,
        model_overrides={"dim": 16, "user_dim": 8, "max_len": 40, "session_gap": GAP},
        train_overrides={"epochs": 1, "batch_size": 64, "num_threads": 1},
        progress=False,
        split=split,
        exclude_history=False,
    )
    bundle = export_bundle(run / "best.pt", tmp_path_factory.mktemp("hrnn-art"), name="hrnn-ml100k", program=False)
    return run / "best.pt", bundle


def _multi_session_histories(ml100k: SeqData, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Test histories that hold at least two session boundaries within the model's 40 events."""
    _, split = user_session_protocol(ml100k, GAP, "user")
    hs, ts = [], []
    for h, t in zip(split.test_hist, split.test_times, strict=True):
        if (np.diff(t[-40:]) > GAP).sum() >= 2:
            hs.append(h)
            ts.append(t)
        if len(hs) == n:
            break
    assert len(hs) == n
    return hs, ts


def test_exported_graphs_equal_eager_on_multi_session_histories(hrnn_run, ml100k: SeqData) -> None:
    ckpt, bundle = hrnn_run
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["onnx"]["time_input"] == "time_seq"
    assert manifest["model_config"]["session_gap"] == GAP
    assert max(manifest["parity_max_abs_diff"].values()) < 1e-4
    model, _ = load_checkpoint(ckpt)
    hs, ts = _multi_session_histories(ml100k, 8)
    hs[0], ts[0] = hs[0][-3:], ts[0][-3:]  # a short one: the graph pads it to max_len itself
    x, t = pad_left(hs), pad_left(ts)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(bundle / "model.ts"))
    with torch.no_grad():
        ref = model(torch.as_tensor(x), torch.as_tensor(t)).numpy()
        got_ts = scripted(torch.as_tensor(x), torch.as_tensor(t)).numpy()
    got_onnx = sess.run(["user_vec"], {"item_seq": x, "time_seq": t})[0]
    np.testing.assert_allclose(got_onnx, ref, atol=1e-4)
    np.testing.assert_allclose(got_ts, ref, atol=1e-4)
    # The times matter: the same items as one long session give another vector.
    flat = np.where(x != 0, 1_000_000 + np.arange(x.shape[1]), 0)
    other = sess.run(["user_vec"], {"item_seq": x, "time_seq": flat})[0]
    assert np.abs(other - ref).max() > 1e-3


def test_served_ranking_equals_offline_on_a_multi_session_history(hrnn_run, ml100k: SeqData) -> None:
    ckpt, bundle_dir = hrnn_run
    bundle = Bundle.load(bundle_dir)
    hs, ts = _multi_session_histories(ml100k, 1)
    items_idx, times = hs[0][-60:], ts[0][-60:]  # longer than max_len: the service cuts it as evaluation does
    ids = [bundle.item_ids[i - 1] for i in items_idx]
    with TestClient(create_app(Settings(bundles=[bundle_dir], api_key="k"))) as client:
        events = [
            {"user_id": "u", "item_id": i, "timestamp": float(t), "event_id": f"e{n}"}
            for n, (i, t) in enumerate(zip(ids, times, strict=True))
        ]
        assert client.post("/events", json={"events": events}, headers=KEY).status_code == 200
        r = client.get("/recommend/u", params={"k": 10})
        assert r.status_code == 200, r.text
        served = [x["item_id"] for x in r.json()["items"]]

    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        scores = model.score(torch.as_tensor(items_idx[None, -40:]), torch.as_tensor(times[None, -40:]))
    scores = scores[0, 1:].numpy().copy()
    scores[items_idx - 1] = -np.inf  # the service does not recommend seen items
    offline = [bundle.item_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
    assert served[:8] == offline[:8]  # float ties at the tail may swap neighbours
