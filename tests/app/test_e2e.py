"""End to end: the real server (`seqrec serve`) as a subprocess on a free port, real Redis, HTTP.

Post a user's events, ask for recommendations, and check they equal what the trained
checkpoint computes offline (eager PyTorch) for that history.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.support.procs import free_port
from training.data import SeqData

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(bundle_path: Path, redis_url: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SEQREC_KEY_PREFIX": f"e2e-{port}:",
        "SEQREC_MAX_HISTORY": "50",
    }
    cmd = [sys.executable, "-m", "training.cli", "serve", "--bundle", str(bundle_path), "--port", str(port)]
    cmd += ["--redis-url", redis_url, "--api-key", "e2e-key"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("server did not become ready")
    yield base
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert "e2e-key" not in out  # the API key never reaches the logs


def test_recommendations_equal_offline_model(server: str, tiny_run: Path, synthetic: SeqData) -> None:
    from training.train import load_checkpoint

    model, ckpt = load_checkpoint(tiny_run / "best.pt")
    ids = list(ckpt["item_ids"])
    # A user's history from the training data, posted out of order (late events) and with one replay.
    longest = int(np.argmax(np.diff(synthetic.offsets)))
    hist = [int(i) for i in synthetic.sequence(longest)[:40]]
    assert len(hist) == 40
    events = [
        {"user_id": "e2e-user", "item_id": ids[i - 1], "timestamp": 1_600_000_000 + t, "event_id": f"e{t}"}
        for t, i in enumerate(hist)
    ]
    shuffled = events[::-1]
    headers = {"X-API-Key": "e2e-key"}
    r = httpx.post(f"{server}/events", json={"events": shuffled[:25]}, headers=headers)
    assert r.status_code == 200 and r.json()["accepted"] == 25
    r = httpx.post(f"{server}/events", json={"events": [*shuffled[25:], shuffled[0]]}, headers=headers)
    assert r.json()["accepted"] == 15 and r.json()["duplicates"] == 1
    assert httpx.post(f"{server}/events", json={"events": events[:1]}).status_code == 401

    body = httpx.get(f"{server}/recommend/e2e-user", params={"k": 20}).json()
    assert body["source"] == "model" and body["history_length"] == 40

    seq = torch.as_tensor(np.array([hist[-model.max_len :]], dtype=np.int64))
    with torch.no_grad():
        scores = model.score(seq)[0].numpy()  # (N+1,)
    scores[0] = -np.inf
    scores[hist] = -np.inf  # the service drops seen items
    top = np.argsort(-scores, kind="stable")[:20]
    got = [x["item_id"] for x in body["items"]]
    assert got == [ids[i - 1] for i in top] or set(got) == {ids[i - 1] for i in top}  # float ties may swap
    np.testing.assert_allclose([x["score"] for x in body["items"]], scores[top], rtol=1e-4, atol=1e-4)


def test_new_user_popularity_and_validation_over_http(server: str) -> None:
    body = httpx.get(f"{server}/recommend/never-seen?k=3").json()
    assert body["source"] == "popularity" and len(body["items"]) == 3
    assert httpx.get(f"{server}/recommend/x?k=5000").status_code == 422
    metrics = httpx.get(f"{server}/metrics").text
    assert "seqrec_inference_seconds_count" in metrics
