"""Against real uvicorn processes: a reload reaches every worker (and processes started later),
and a request body that never completes is cut off (408, connection closed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import API_KEY, ROOT, ApiProc, RedisProc, wait_for

KEY = {"X-API-Key": API_KEY}


class Workers(ApiProc):
    """`uvicorn --workers N`: one port, N processes (the kernel spreads new connections over them)."""

    def __init__(self, n: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n = n

    def start(self) -> Workers:
        cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(self.n), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        wait_for(self._alive, 120, f"API on {self.port}", interval=0.2)
        return self


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProc]:
    r = RedisProc(tmp_path / "redis").start()
    yield r
    r.kill()


def live_workers(redis: RedisProc, prefix: str) -> int:
    return redis.client().zcount(f"{prefix}workers", time.time() - 10, "+inf")


def test_reload_reaches_every_worker_and_later_processes(
    redis: RedisProc, deploy_bundles: list[Path], tmp_path: Path
) -> None:
    prefix = "reach:"
    api = Workers(2, deploy_bundles, redis.url, tmp_path, SEQREC_KEY_PREFIX=prefix).start()
    later: ApiProc | None = None
    try:
        wait_for(lambda: live_workers(redis, prefix) == 2, 60, "both workers to heartbeat")
        bundles = [str(b) for b in deploy_bundles]
        r = httpx.post(
            f"{api.base}/admin/reload", json={"bundles": bundles, "default_model": "sasrec-b"}, headers=KEY, timeout=60
        )
        assert r.status_code == 200, r.text
        reached = r.json()["reached"]
        assert reached["scope"] == "redis" and reached["complete"], reached
        assert reached["live"] == 2 and len(reached["applied"]) == 2 and not reached["pending"]
        # New connection per request: each may land on either worker; every answer is the new default.
        served = [httpx.get(f"{api.base}/recommend/u-{n}", params={"k": 1}).json()["bundle"] for n in range(50)]
        assert served == ["sasrec-b"] * 50
        # A process started afterwards, configured with the old default, serves the stored configuration.
        later = ApiProc(deploy_bundles, redis.url, tmp_path, SEQREC_KEY_PREFIX=prefix).start()
        assert httpx.get(f"{later.base}/recommend/x", params={"k": 1}).json()["bundle"] == "sasrec-b"
        # A reload sent to any process reaches all three.
        r = httpx.post(f"{later.base}/admin/reload", json={"default_model": "sasrec-a"}, headers=KEY, timeout=60)
        assert r.status_code == 200 and r.json()["reached"]["complete"] and r.json()["reached"]["live"] == 3
        served = {httpx.get(f"{api.base}/recommend/u-{n}", params={"k": 1}).json()["bundle"] for n in range(20)}
        assert served == {"sasrec-a"}
    finally:
        if later is not None:
            later.stop()
        api.stop()


def test_unfinished_body_gets_408_and_the_connection_closes(redis: RedisProc, deploy_bundle: Path, api_factory) -> None:
    api = api_factory([deploy_bundle], redis.url, SEQREC_KEY_PREFIX="slow:", SEQREC_BODY_TIMEOUT_S="0.5")
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        head = (
            f"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: {API_KEY}\r\n"
            "Content-Length: 200\r\n\r\n"
        )
        s.sendall(head.encode() + b'{"events": [{"user_id"')  # and never the rest
        t0 = time.monotonic()
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break  # the server closed the connection
            got += chunk
        waited = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"not received within 0.5 s" in got
    assert 0.4 < waited < 5
    # Other clients were served meanwhile and after.
    assert httpx.get(f"{api.base}/healthz").status_code == 200
