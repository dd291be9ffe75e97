"""Read-your-writes with the user-vector cache on: two real API processes on one real Redis.

Run for a SASRec bundle (cached vectors) and a GRU4Rec bundle (recurrent states advanced by
each new event).

Threads write events for users through one process and read them back at once through the
other (and the same one). After an acknowledged write the read must include the event, and for
users with a single writer the answer must equal a full recompute of the known history; shared
users (two writers) must show at least every event acknowledged before the read started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.bundles.bundle import Bundle
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[3]
KEY = {"X-API-Key": "rw-key"}


def _serve(bundle: Path, redis_url: str, prefix: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQREC_KEY_PREFIX": prefix, "SEQREC_USER_CACHE": "true"}
    cmd = [sys.executable, "-m", "training.cli", "serve", "--bundle", str(bundle), "--port", str(port)]
    cmd += ["--redis-url", redis_url, "--api-key", KEY["X-API-Key"]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def _ready(proc: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("server exited")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail("server did not become ready")


@pytest.fixture(scope="module")
def gru4rec_bundle(synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GRU4Rec: its bundle offers the per-user recurrent state (advanced per event)."""
    from training.export import export_bundle
    from training.train import train

    run = tmp_path_factory.mktemp("rw-gru-run")
    over = {"epochs": 1, "batch_size": 128, "max_users": 300, "extra": {"parallel": "padded"}}
    train("gru4rec", synthetic, run, model_overrides={"dim": 16}, train_overrides=over, progress=False)
    return export_bundle(run / "best.pt", tmp_path_factory.mktemp("rw-gru-art"), name="tiny-gru4rec", program=False)


@pytest.fixture(params=["sasrec", "gru4rec"])
def served_bundle(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("bundle_path" if request.param == "sasrec" else "gru4rec_bundle")


@pytest.fixture
def two_servers(served_bundle: Path, redis_url: str, key_prefix: str) -> Iterator[list[str]]:
    started = [_serve(served_bundle, redis_url, key_prefix) for _ in range(2)]
    try:
        for proc, base in started:
            _ready(proc, base)
        yield [base for _, base in started]
    finally:
        for proc, _ in started:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _expected(b: Bundle, history: list[str], k: int) -> list[str]:
    seen = b.encode(history)
    labels, _ = b.index.search(b.user_vectors([seen]), k, [seen])
    labels = labels[0][labels[0] > 0]
    return b.external(labels)


def test_read_after_acknowledged_write_sees_it_across_processes(two_servers: list[str], served_bundle: Path) -> None:
    b = Bundle.load(served_bundle)
    items = b.item_ids[:200]
    failures: list[str] = []
    acked_shared = {"n": 0}
    lock = threading.Lock()

    def own_user(t: int) -> None:
        user, history = f"own{t}", []
        with httpx.Client(timeout=10) as c:
            for n in range(25):
                w, r = two_servers[n % 2], two_servers[(n + t) % 2]  # writer and reader processes vary
                item = items[(7 * t + 3 * n) % len(items)]
                ev = {"user_id": user, "item_id": item, "timestamp": 1000 + n, "event_id": f"e{n}"}
                assert c.post(f"{w}/events", json={"events": [ev]}, headers=KEY).json()["accepted"] == 1
                history.append(item)
                for _ in range(2):  # the second read may be a cache hit: it must still be this history's
                    body = c.get(f"{r}/recommend/{user}", params={"k": 10}).json()
                    got = [x["item_id"] for x in body["items"]]
                    if body["history_length"] != len(history) or got != _expected(b, history, 10):
                        failures.append(f"{user} after {n + 1} events: {body['history_length']} {got}")

    def shared_user(t: int) -> None:
        with httpx.Client(timeout=10) as c:
            for n in range(25):
                ev = {"user_id": "shared", "item_id": items[n], "timestamp": 1000 + 100 * t + n, "event_id": f"{t}-{n}"}
                assert c.post(f"{two_servers[t]}/events", json={"events": [ev]}, headers=KEY).status_code == 200
                with lock:
                    acked_shared["n"] += 1
                    floor = acked_shared["n"]
                body = c.get(f"{two_servers[1 - t]}/recommend/shared", params={"k": 10}).json()
                if body["history_length"] < floor:
                    failures.append(f"shared: {body['history_length']} < {floor} acknowledged")

    threads = [threading.Thread(target=own_user, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=shared_user, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, failures[:5]
    final = httpx.get(f"{two_servers[0]}/recommend/shared", params={"k": 10}).json()
    assert final["history_length"] == 50
    assert np.isfinite([x["score"] for x in final["items"]]).all()
