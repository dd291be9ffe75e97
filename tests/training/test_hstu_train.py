"""HSTU trained (sampled softmax and full CE) on ML-100K with its event times, exported through the
normal bundle path, and served by the unchanged service: its answers equal the torch model's. The
cached step graph (step.onnx) ends where model.onnx does on real histories.
"""

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
from training.data import SeqData, leave_one_out
from training.export import HSTU_STEP_OUTPUTS, export_bundle, export_hstu_step
from training.train import load_checkpoint, train

KEY = {"X-API-Key": "k"}
MAX_LEN = 50
MODEL = {"max_len": MAX_LEN, "dim": 16, "num_heads": 2}
TRAIN = {"epochs": 2, "batch_size": 64, "max_users": 400, "eval_batch_size": 256}
RUNS = {
    "sampled": ({}, {"loss": "sampled", "num_negatives": 128}),
    "ce": ({}, {"loss": "ce"}),
    "untimed": ({"time_buckets": 0}, {"loss": "ce"}),
}


@pytest.fixture(scope="module")
def runs(ml100k: SeqData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    art = tmp_path_factory.mktemp("hstu-art")
    out = {}
    for name, (model_over, train_over) in RUNS.items():
        run = tmp_path_factory.mktemp(f"hstu-{name}")
        train("hstu", ml100k, run, {**MODEL, **model_over}, {**TRAIN, **train_over}, progress=False)
        out[name] = (run, export_bundle(run / "best.pt", art, name=f"tiny-hstu-{name}", program=False))
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_both_losses_train_and_the_bundle_matches_eager(name: str, runs) -> None:
    run, bundle = runs[name]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["loss"] < rows[0]["loss"]  # it learns
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_config"]["loss"] == RUNS[name][1]["loss"]
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model"] == "hstu"
    assert m["onnx"].get("time_input") == (None if name == "untimed" else "time_seq")
    assert max(m["parity_max_abs_diff"].values()) <= 1e-4


@pytest.mark.parametrize("name", ["sampled", "untimed"])
@pytest.mark.parametrize("user", [0, 7])
def test_served_ranking_equals_the_torch_model(name: str, user: int, runs, ml100k: SeqData) -> None:
    run, bundle = runs[name]
    s = leave_one_out(ml100k)
    hist, times = s.test_hist[user], s.test_times[user]  # type: ignore[index]
    ids = [ml100k.item_ids[i - 1] for i in hist]
    events = [
        {"user_id": "u", "item_id": i, "timestamp": int(t), "event_id": f"e{n:05d}"}
        for n, (i, t) in enumerate(zip(ids, times, strict=True))
    ]
    with TestClient(create_app(Settings(bundles=[bundle], api_key="k", max_history=1000))) as client:
        assert client.post("/events", json={"events": events[::-1]}, headers=KEY).status_code == 200
        r = client.get("/recommend/u", params={"k": 20})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["model"] == "hstu" and body["source"] == "model"

    model, _ = load_checkpoint(run / "best.pt")
    args = (
        (torch.as_tensor(hist[None]),)
        if name == "untimed"
        else (torch.as_tensor(hist[None]), torch.as_tensor(times[None]))
    )
    with torch.no_grad():
        scores = model.score(*args)[0, 1:].numpy().copy()
    scores[hist - 1] = -np.inf  # seen items are not recommended
    top = np.argsort(-scores, kind="stable")[:20]
    assert [x["item_id"] for x in body["items"]][:15] == [ml100k.item_ids[i] for i in top][:15]
    np.testing.assert_allclose([x["score"] for x in body["items"]], scores[top], atol=1e-4)


@pytest.mark.parametrize("name", ["sampled", "untimed"])
def test_step_graph_appends_events_to_the_cache_as_model_onnx_encodes_the_whole(
    name: str, runs, ml100k: SeqData, tmp_path: Path
) -> None:
    run, bundle = runs[name]
    model, _ = load_checkpoint(run / "best.pt")
    spec = export_hstu_step(model, tmp_path / "step.onnx")
    timed = name != "untimed"
    assert spec["inputs"][-1] == ("time_seq" if timed else "item_seq") and spec["parity_max_abs_diff"] <= 1e-4
    step = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    s = leave_one_out(ml100k)
    layers, wk, wv = spec["cache_shape"]
    for user in (0, 3, 11):
        hist, times = s.test_hist[user][:MAX_LEN], s.test_times[user][:MAX_LEN]  # type: ignore[index]
        feed = {
            "cache_k": np.zeros((layers, 1, 0, wk), np.float32),
            "cache_v": np.zeros((layers, 1, 0, wv), np.float32),
        }
        feed["cache_times"] = np.zeros((1, 0), np.int64)
        for end in range(1, len(hist) + 1):  # one event at a time, as the events arrive
            feed |= {"item_seq": hist[None, end - 1 : end].astype(np.int64), "time_seq": times[None, end - 1 : end]}
            k, v, vec = step.run(HSTU_STEP_OUTPUTS, {n: feed[n] for n in spec["inputs"]})
            feed |= {"cache_k": k, "cache_v": v, "cache_times": times[None, :end]}
            if end in (1, 10, len(hist)):
                want_feed = {"item_seq": hist[None, :end].astype(np.int64)}
                if timed:
                    want_feed["time_seq"] = times[None, :end]
                want = full.run(["user_vec"], want_feed)[0]
                assert np.abs(vec - want).max() <= 1e-4
        assert k.shape == (layers, 1, len(hist), wk)


def test_a_float16_cache_halves_the_bytes_within_the_documented_error(runs, tmp_path: Path) -> None:
    run, _ = runs["sampled"]
    model, _ = load_checkpoint(run / "best.pt")
    spec = export_hstu_step(model, tmp_path / "step16.onnx", cache_dtype="float16")
    assert spec["cache_dtype"] == "float16" and 0 < spec["parity_max_abs_diff"] <= 5e-3
    step = ort.InferenceSession(str(tmp_path / "step16.onnx"), providers=["CPUExecutionProvider"])
    layers, wk, wv = spec["cache_shape"]
    feed = {
        "cache_k": np.zeros((layers, 1, 0, wk), np.float16),
        "cache_v": np.zeros((layers, 1, 0, wv), np.float16),
        "cache_times": np.zeros((1, 0), np.int64),
        "item_seq": np.array([[3, 9, 4]], np.int64),
        "time_seq": np.array([[978_300_000, 978_300_060, 978_400_000]], np.int64),
    }
    k, v, vec = step.run(HSTU_STEP_OUTPUTS, feed)
    assert k.dtype == v.dtype == np.float16 and k.shape == (layers, 1, 3, wk) and vec.dtype == np.float32
