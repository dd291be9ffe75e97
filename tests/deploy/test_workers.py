"""Against real API processes: the worker supervisor (one socket per worker, a dead worker replaced,
a busy port refused), a reload that reaches every worker (and processes started later), and a
request body that never completes cut off (408, connection closed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import API_KEY, ROOT, ApiProc, RedisProc, wait_for

KEY = {"X-API-Key": API_KEY}


class Workers(ApiProc):
    """`python -m app.runtime.server --workers N` (the serving image's command): one port, N processes, each
    with its own listening socket (the kernel spreads new connections over them)."""

    def __init__(self, n: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n = n

    def start(self) -> Workers:
        cmd = [sys.executable, "-m", "app.runtime.server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(self.n), "--graceful-s", "5"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        wait_for(self.ready, 120, f"API on {self.port}", interval=0.2)
        return self


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProc]:
    r = RedisProc(tmp_path / "redis").start()
    yield r
    r.kill()


def live_workers(redis: RedisProc, prefix: str) -> int:
    return redis.client().zcount(f"{prefix}workers", time.time() - 10, "+inf")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def connections_by_process(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections to `port` that each process holds (Linux: /proc/net/tcp's socket
    inodes against each process's open file descriptors)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED, server side
                inodes.add(f"socket:[{f[9]}]")
    held = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        held[pid] = sum(1 for fd in fds.iterdir() if _link(fd) in inodes)
    return held


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing and /proc are Linux's")
def test_connections_spread_over_workers_a_dead_worker_is_replaced_and_sigterm_stops_all(
    redis: RedisProc, deploy_bundle: Path, tmp_path: Path
) -> None:
    api = Workers(2, [deploy_bundle], redis.url, tmp_path, SEQREC_KEY_PREFIX="spread:").start()
    try:
        assert api.proc is not None
        wait_for(lambda: live_workers(redis, "spread:") == 2, 60, "both workers to heartbeat")
        # 16 keep-alive connections opened at once, each answered once (so each has been accepted).
        clients = [socket.create_connection(("127.0.0.1", api.port), timeout=10) for _ in range(16)]
        for c in clients:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for c in clients:
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        held = connections_by_process(api.port, children(api.proc.pid))
        serving = {pid: n for pid, n in held.items() if n}
        # Each worker accepts from its own queue: neither takes all 16 (with one shared socket,
        # whichever process woke first could). All on one worker by chance: 2 in 65,536.
        assert len(serving) == 2 and sum(serving.values()) == 16, held
        for c in clients:
            c.close()
        victim = next(iter(serving))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: live_workers(redis, "spread:") >= 2 and victim not in children(api.proc.pid), 60, "a new one")
        # Every new connection is answered: those the kernel queued for the dead worker's socket
        # while its replacement started included.
        statuses = [httpx.get(f"{api.base}/healthz", timeout=60).status_code for _ in range(40)]
        assert statuses == [200] * 40
        assert "exited with -9; starting a new one" in api.log.read_text()
        api.proc.send_signal(signal.SIGTERM)
        assert api.proc.wait(timeout=30) == 0
        assert "Traceback" not in api.log.read_text()
        with pytest.raises(OSError):  # the port refuses: no socket left listening
            socket.create_connection(("127.0.0.1", api.port), timeout=2)
    finally:
        api.stop()


def test_a_port_in_use_and_a_worker_that_cannot_start_end_the_server_at_once(
    deploy_bundle: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a socket that would share
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "app.runtime.server", "--port", str(port), "--workers", "2"]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "invalid settings" in r.stderr and "SEQREC_BUNDLES" in r.stderr
        assert "Traceback" not in r.stderr
        env["SEQREC_BUNDLES"] = str(deploy_bundle)
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    # A folder that is not a bundle: every worker fails its start-up; the supervisor stops instead
    # of restarting them forever.
    env |= {"SEQREC_BUNDLES": str(tmp_path), "SEQREC_REDIS_URL": "redis://127.0.0.1:1/0"}
    cmd = [sys.executable, "-m", "app.runtime.server", "--port", "0", "--workers", "2"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "could not start" in r.stderr
    assert time.monotonic() - t0 < 60
    # The reason is the last thing printed, after uvicorn's generic line: with 2 workers and with one.
    env |= {"SEQREC_BUNDLES": str(deploy_bundle), "SEQREC_EXPERIMENT": "a=nope-bundle:50,b=also-not:50"}
    env.pop("SEQREC_REDIS_URL")
    for workers in ("2", "1"):
        cmd = [sys.executable, "-m", "app.runtime.server", "--port", "0", "--workers", workers]
        if workers == "2":
            env["SEQREC_REDIS_URL"] = "redis://127.0.0.1:1/0"  # the in-process store is refused for 2 workers
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 3 and last.startswith("seqrec: cannot start: experiment: variant 1"), r.stderr[-2000:]
        assert "nope-bundle" not in last
        env.pop("SEQREC_REDIS_URL", None)


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
