"""Real processes on loopback ports: a throwaway redis-server and API servers.

The one copy used by the tests (tests/app, tests/deploy), the benchmarks and scripts/. It lives
under tests/ because benchmarks/ and scripts/ are, like tests/, tools of a checkout: none of the
three ships in the wheel or the images, and all run with the repository root on sys.path. It
imports no pytest, so a benchmark or script can use it outside a test run; a test turns
RedisNotInstalled into a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
REDIS_CONF = ROOT / "docker" / "redis.conf"  # the compose Redis config (AOF, appendfsync always)
API_KEY = "test-api-key"  # what ApiProc.uvicorn sets as SEQREC_API_KEY unless told otherwise
HOST = "127.0.0.1"


class RedisNotInstalled(RuntimeError):
    """redis-server is not on PATH."""


class RedisExited(RuntimeError):
    """redis-server exited before it answered (its port taken, a bad config)."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll pred until it is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a clean shutdown: Redis fsyncs its AOF, uvicorn drains), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisProc:
    """A redis-server subprocess on a free port that can be stopped, killed and restarted on the same
    port and data directory. Without `conf` it persists nothing; with it (e.g. REDIS_CONF) it runs
    that config file with only what differs on a dev machine overridden."""

    def __init__(
        self,
        workdir: Path | None = None,
        conf: Path | None = None,
        extra: Sequence[str] = (),
        log: Path | None = None,
        port: int | None = None,
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisNotInstalled("redis-server is not installed")
        self.exe = exe
        self.dir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="seqrec-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        # A port we picked may be taken before redis-server binds it (another test run's process, a
        # client's ephemeral port): the first start may then move to another one, a restart never.
        self._may_move = port is None
        self.conf = conf
        self.extra = list(extra)
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 20, attempts: int = 3) -> RedisProc:
        for attempt in range(1, attempts + 1):
            self._spawn()
            try:
                wait_for(self._ready, timeout, f"redis-server on {self.port}")
                break
            except RedisExited:
                if not self._may_move or attempt == attempts:
                    raise
                self.port = free_port()
        self._may_move = False
        return self

    def _spawn(self) -> None:
        if self.conf is not None:
            args = [str(self.conf), "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir)]
            args += ["--protected-mode", "no", "--daemonize", "no"]
        else:
            args = ["--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        out: IO[Any] | int = self.log.open("w") if self.log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen([self.exe, *args, *self.extra], cwd=self.dir, stdout=out, stderr=subprocess.STDOUT)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RedisExited(f"redis-server on {self.port} exited with {self.proc.returncode}")
        try:
            import redis

            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except Exception:
            return False

    def stop(self) -> None:
        """Graceful: SIGTERM makes Redis fsync the AOF and exit cleanly."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=2)

    def __enter__(self) -> RedisProc:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class ApiProc:
    """An API server process, ready when GET `ready_path` answers 200.

    `ApiProc(bundles, redis_url, logdir, **env)` runs one uvicorn process of the app
    (app.main:create_app, what each of the serving image's workers runs); `ApiProc.custom(...)`
    runs another command (`seqrec serve`, the image's entrypoint)."""

    def __init__(
        self, bundles: Sequence[Path], redis_url: str | None, logdir: Path, api_key: str = API_KEY, **env: str
    ) -> None:
        port = free_port()
        full = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SEQREC_BUNDLES": ",".join(str(b) for b in bundles),
            "SEQREC_API_KEY": api_key,
            "SEQREC_ACCESS_LOG": "false",
            **env,
        }
        if redis_url:
            full["SEQREC_REDIS_URL"] = redis_url
        cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", HOST]
        cmd += ["--port", str(port), "--timeout-graceful-shutdown", "20", "--log-level", "warning"]
        self._setup(cmd, full, logdir / f"api-{port}.log", port, "/healthz")
        self._logdir: Path | None = logdir  # the port is ours to change (see start)

    @classmethod
    def custom(
        cls, command: Sequence[str], env: Mapping[str, str], log: Path, port: int, ready_path: str = "/healthz"
    ) -> ApiProc:
        """Any server command that listens on `port` (the command must be told the port itself)."""
        api = cls.__new__(cls)
        api._setup(command, env, log, port, ready_path)
        api._logdir = None  # the caller's port, baked into its command
        return api

    def _setup(self, command: Sequence[str], env: Mapping[str, str], log: Path, port: int, ready_path: str) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.log = log
        self.port = port
        self.ready_path = ready_path
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def spawn(self) -> ApiProc:
        """Start the process without waiting for it (start several, then wait for each: ready())."""
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )
        return self

    def start(self, timeout: float = 90, attempts: int = 3) -> ApiProc:
        """Spawn and wait until ready. The port was free when picked, but another process (a parallel
        test worker's server, a client's ephemeral port) may bind it first: the first start of a
        server on a port of our choosing then moves to another one; a restart keeps its port."""
        for attempt in range(1, attempts + 1):
            self.spawn()
            try:
                wait_for(self.ready, timeout, f"API on {self.port}", interval=0.2)
                break
            except RuntimeError as exc:
                if self._logdir is None or attempt == attempts or "address already in use" not in str(exc):
                    raise
                self._move(free_port(), self._logdir)
        self._logdir = None
        return self

    def _move(self, port: int, logdir: Path) -> None:
        self.command[self.command.index("--port") + 1] = str(port)
        self.port = port
        self.log = logdir / f"api-{port}.log"

    def ready(self) -> bool:
        """GET ready_path == 200; raises when the process has exited (with its log's tail)."""
        import urllib.error
        import urllib.request

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"API exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.base}{self.ready_path}", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> ApiProc:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
