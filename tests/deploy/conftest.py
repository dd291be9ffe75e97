"""Deployment tests: real redis-server and real API processes (uvicorn) on free loopback ports.

Redis runs with the compose config (docker/redis.conf) where a test is about persistence, so
what is tested is what `docker compose up` runs. Nothing here touches the shared Redis on 6379.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
REDIS_CONF = ROOT / "docker" / "redis.conf"
API_KEY = "deploy-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RedisProc:
    """A redis-server subprocess that can be stopped, killed and restarted on the same port and data dir."""

    def __init__(self, workdir: Path, conf: Path | None = None, extra: list[str] | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = conf
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        if self.conf is not None:
            # The compose config file itself, with only what differs on a dev machine overridden.
            args = [str(self.conf), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
            args += ["--protected-mode", "no", "--daemonize", "no"]
        else:
            args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.exe, *args, *self.extra], cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._ready, 20, "redis-server")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            import redis

            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except Exception:
            return False

    def stop(self) -> None:
        """Graceful: SIGTERM makes Redis fsync the AOF and exit cleanly."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=2)


class ApiProc:
    """`uvicorn app.main:create_app --factory`: the command the serving image runs."""

    def __init__(self, bundles: list[Path], redis_url: str | None, logdir: Path, **env: str) -> None:
        self.port = free_port()
        self.log = logdir / f"api-{self.port}.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SEQREC_BUNDLES": ",".join(str(b) for b in bundles),
            "SEQREC_API_KEY": API_KEY,
            "SEQREC_ACCESS_LOG": "false",
            **env,
        }
        if redis_url:
            self.env["SEQREC_REDIS_URL"] = redis_url
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiProc:
        cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--timeout-graceful-shutdown", "20", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        wait_for(self._alive, 90, f"API on {self.port}", interval=0.2)
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"API exited: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def deploy_bundles(ml100k, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny real SASRec bundles with item titles (ML-100K), served side by side."""
    from training.data import item_text
    from training.export import export_bundle
    from training.train import train

    text = item_text("ml-100k", data_dir)
    out = tmp_path_factory.mktemp("deploy-artifacts")
    paths = []
    for name, seed in (("sasrec-a", 0), ("sasrec-b", 1)):
        run = tmp_path_factory.mktemp(f"deploy-run-{name}")
        train(
            "sasrec",
            ml100k,
            run,
            model_overrides={"max_len": 30, "dim": 16, "num_layers": 1},
            train_overrides={"epochs": 1, "batch_size": 128, "max_users": 300, "seed": seed},
            progress=False,
        )
        paths.append(export_bundle(run / "best.pt", out, name=name, item_text=text))
    return paths


@pytest.fixture(scope="session")
def deploy_bundle(deploy_bundles: list[Path]) -> Path:
    return deploy_bundles[0]


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProc]:
    """A throwaway Redis with the compose config (AOF, fsync always, noeviction)."""
    r = RedisProc(tmp_path / "redis", conf=REDIS_CONF).start()
    yield r
    r.kill()


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator:
    started: list[ApiProc] = []

    def make(bundles: list[Path], redis_url: str | None, **env: str) -> ApiProc:
        api = ApiProc(bundles, redis_url, tmp_path, **env).start()
        started.append(api)
        return api

    yield make
    for a in started:
        a.stop()
