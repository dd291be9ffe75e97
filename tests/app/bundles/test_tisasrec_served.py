"""TiSASRec exported and served: its graphs take the event times as a second input, agree with
eager PyTorch, and the unchanged service, fed a user's real ML-100K events with their timestamps,
ranks exactly as the torch model does on that history and those times.
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
from training.batching import pad_left
from training.data import SeqData, leave_one_out
from training.export import export_bundle
from training.train import load_checkpoint, train

KEY = {"X-API-Key": "k"}
MAX_LEN = 50


@pytest.fixture(scope="module")
def tisasrec_bundle(ml100k: SeqData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = tmp_path_factory.mktemp("tisasrec-run")
    model = {"max_len": MAX_LEN, "dim": 32, "num_heads": 2, "max_interval": 64}
    train("tisasrec", ml100k, run, model_overrides=model, train_overrides={"epochs": 2}, progress=False)
    bundle = export_bundle(
        run / "best.pt", tmp_path_factory.mktemp("tisasrec-art"), name="tiny-tisasrec", program=False
    )
    return run / "best.pt", bundle


def test_manifest_names_the_time_input_and_parity_holds(tisasrec_bundle: tuple[Path, Path]) -> None:
    _, bundle = tisasrec_bundle
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model"] == "tisasrec" and m["onnx"]["time_input"] == "time_seq"
    assert {"onnx", "torchscript"} <= set(m["parity_max_abs_diff"])
    assert max(m["parity_max_abs_diff"].values()) <= 1e-4


def test_onnx_and_torchscript_match_eager_on_real_histories_and_times(
    tisasrec_bundle: tuple[Path, Path], ml100k: SeqData
) -> None:
    ckpt, bundle = tisasrec_bundle
    model, _ = load_checkpoint(ckpt)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(bundle / "model.ts"))
    s = leave_one_out(ml100k)
    assert s.test_times is not None
    hists, times = s.test_hist[:40], s.test_times[:40]  # lengths from 4 to hundreds: padding and truncation
    assert min(map(len, hists)) < MAX_LEN < max(map(len, hists))
    probes = [(hists, times), (hists[:1], times[:1]), ([hists[0][:1]], [times[0][:1]])]
    for hs, tms in probes:
        items, tseq = pad_left(hs), pad_left(tms)  # over-long rows: the graphs cut to max_len themselves
        with torch.no_grad():
            ref = model(torch.as_tensor(items), torch.as_tensor(tseq)).numpy()
            got_ts = ts(torch.as_tensor(items), torch.as_tensor(tseq)).numpy()
        got = sess.run(["user_vec"], {"item_seq": items, "time_seq": tseq})[0]
        assert np.abs(got - ref).max() <= 1e-4 and np.abs(got_ts - ref).max() <= 1e-4
    # the times matter: the same items with every gap set to one second score differently
    flat = [t[0] + np.arange(len(t)) for t in times[:5]]
    other = sess.run(["user_vec"], {"item_seq": pad_left(hists[:5]), "time_seq": pad_left(flat)})[0]
    same = sess.run(["user_vec"], {"item_seq": pad_left(hists[:5]), "time_seq": pad_left(times[:5])})[0]
    assert np.abs(other - same).max() > 1e-3


@pytest.mark.parametrize("user", [0, 7, 300])
def test_served_ranking_equals_the_torch_model_on_the_users_real_events(
    user: int, tisasrec_bundle: tuple[Path, Path], ml100k: SeqData
) -> None:
    ckpt, bundle = tisasrec_bundle
    s = leave_one_out(ml100k)
    hist, times = s.test_hist[user], s.test_times[user]  # type: ignore[index]
    ids = [ml100k.item_ids[i - 1] for i in hist]
    # Event ids in file order, so events in the same second keep the order training saw
    # (the store orders equal timestamps by member, as a Redis sorted set does).
    events = [
        {"user_id": "u", "item_id": i, "timestamp": int(t), "event_id": f"e{n:05d}"}
        for n, (i, t) in enumerate(zip(ids, times, strict=True))
    ]
    # The store keeps the whole history (ML-100K users have up to 700 events), so "seen" is all of it.
    with TestClient(create_app(Settings(bundles=[bundle], api_key="k", max_history=1000))) as client:
        assert client.post("/events", json={"events": events[::-1]}, headers=KEY).status_code == 200
        r = client.get("/recommend/u", params={"k": 20})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["model"] == "tisasrec" and body["source"] == "model"

    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        scores = model.score(torch.as_tensor(hist[None]), torch.as_tensor(times[None]))[0, 1:].numpy().copy()
    scores[hist - 1] = -np.inf  # seen items are not recommended
    top = np.argsort(-scores, kind="stable")[:20]
    assert [x["item_id"] for x in body["items"]][:15] == [ml100k.item_ids[i] for i in top][:15]
    np.testing.assert_allclose([x["score"] for x in body["items"]], scores[top], atol=1e-4)
