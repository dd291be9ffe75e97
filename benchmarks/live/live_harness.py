"""Processes the live-loop benchmarks start: a private redis-server and API servers, stopped at the end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
from tests.support.procs import free_port, port_open, wait_for  # noqa: E402


@contextmanager
def processes() -> Iterator[list[subprocess.Popen]]:
    """A list to append started processes to; all are terminated (then killed) on exit, newest first."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def start_redis(procs: list[subprocess.Popen]) -> str:
    """A redis-server without persistence on a free loopback port; returns its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    wait_for(lambda: port_open(port), 20, f"redis-server on port {port}")
    return f"redis://127.0.0.1:{port}/0"


def start_api(procs: list[subprocess.Popen], env: dict[str, str], log: Path | None = None) -> int:
    """`uvicorn app.main:create_app` (one worker) with `env`; returns its port once it listens."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    out = log.open("w") if log is not None else subprocess.DEVNULL
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    wait_for(lambda: port_open(port), 120, f"the API on port {port}")
    return port
