"""The docker-compose topology as local processes (no Docker engine): Redis, the training job, N APIs.

Used by scripts/local_topology.py (the drive through it) and benchmarks/serving/mixed_load.py (load on it):
1. redis-server with the compose config file (docker/redis.conf: AOF, appendfsync always,
   noeviction), on a free loopback port, its data in the work directory;
2. the training job: docker/train-job.sh itself (prepare -> train -> export -> publish symlink)
   into a bundle directory, the local stand-in for the `bundles` volume;
3. an api.env made from docker/api.env.example with a random key, and N API processes started
   by docker/serve-entrypoint.sh (the serving image's entrypoint), sharing that Redis and the
   bundle directory, polling it for new bundles.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.support.procs import HOST, REDIS_CONF, ROOT, ApiProc, RedisProc, free_port, stop_process

DOCKER = ROOT / "docker"


class RedisCluster(Protocol):
    """What the topology needs of a Redis Cluster (tests/support/cluster.py: ClusterProcs)."""

    url: str
    ports: list[int]

    def start(self) -> object: ...

    def stop(self) -> None: ...


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@dataclass
class Topology:
    """Redis + N API processes + the bundle directory, as docker-compose.yml wires them."""

    workdir: Path
    workers_per_api: int = 1
    n_api: int = 2
    redis_port: int = field(default_factory=free_port)
    api_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> process, in start order
    api_env: dict[str, str] = field(default_factory=dict)
    cluster: RedisCluster | None = None  # set: a Redis Cluster instead of one redis-server

    @property
    def redis_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def bundle_root(self) -> Path:
        return self.workdir / "bundles"

    @property
    def api_key(self) -> str:
        return self.api_env["SEQREC_API_KEY"]

    def bases(self) -> list[str]:
        return [f"http://{HOST}:{p}" for p in self.api_ports]

    def start_redis(self) -> None:
        """Raises RedisNotInstalled when there is no redis-server."""
        if self.cluster is not None:
            self.cluster.start()
            return
        redis = RedisProc(self.workdir / "redis", conf=REDIS_CONF, log=self.workdir / "redis.log", port=self.redis_port)
        redis.start()
        assert redis.proc is not None
        self.procs["redis"] = redis.proc

    def train(self, dataset: str, train_args: str, model: str = "sasrec", **job_env: str) -> Path:
        """Run docker/train-job.sh (the compose `train` service's command) against the local dirs."""
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MODEL": model,
            "DATASET": dataset,
            "TRAIN_ARGS": train_args,
            "BUNDLE_ROOT": str(self.bundle_root),
            "RUN_DIR": str(self.workdir / "runs"),
            "SEQREC": f"{sys.executable} -m training.cli",
            "PYTHON": sys.executable,
            **job_env,
        }
        env.setdefault("SEQREC_CACHE_DIR", str(self.workdir / "cache"))
        subprocess.run(["sh", str(DOCKER / "train-job.sh")], cwd=ROOT, env=env, check=True)
        target = f"{model}-treatment" if job_env.get("PUBLISH") == "treatment" else model
        return (self.bundle_root / target).resolve()

    def publish(self, bundle: Path, model: str = "sasrec") -> Path:
        """Publish an already exported bundle as the job does (a copy under releases/, then the
        `model` symlink), for a topology whose subject is not the training job."""
        release = self.bundle_root / "releases" / bundle.name
        shutil.copytree(bundle, release)
        (self.bundle_root / model).symlink_to(Path("releases") / bundle.name)
        return release

    def write_api_env(self) -> Path:
        """api.env from the example, with a fresh random key (what a deployer does by hand)."""
        text = (DOCKER / "api.env.example").read_text()
        key = secrets.token_urlsafe(24)
        lines = [f"SEQREC_API_KEY={key}" if ln.startswith("SEQREC_API_KEY=") else ln for ln in text.splitlines()]
        path = self.workdir / "api.env"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        self.api_env = read_env_file(path)
        return path

    def start_apis(self, model: str = "sasrec", poll_s: float = 1.0, extra_env: dict[str, str] | None = None) -> None:
        venv_bin = str(Path(sys.executable).parent)
        apis = []
        for i in range(self.n_api):
            port = free_port()
            env = {
                **os.environ,
                "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
                "PYTHONPATH": str(ROOT),
                **self.api_env,
                # What docker-compose.yml's `api.environment` sets:
                "SEQREC_REDIS_URL": self.redis_url,
                "SEQREC_BUNDLES": str(self.bundle_root / model),
                "SEQREC_BUNDLE_POLL_S": str(poll_s),
                "SEQREC_WORKERS": str(self.workers_per_api),
                "SEQREC_GRACEFUL_S": "20",
                "HOST": HOST,
                "PORT": str(port),
                **(extra_env or {}),
            }
            cmd = ["sh", str(DOCKER / "serve-entrypoint.sh")]
            api = ApiProc.custom(cmd, env, self.workdir / f"api{i}.log", port, ready_path="/readyz").spawn()
            assert api.proc is not None
            self.procs[f"api{i}"] = api.proc
            self.api_ports.append(port)
            apis.append(api)
        for api in apis:  # all started first: they load their bundles in parallel
            self._wait(api.ready, 120, f"API {api.base}")

    def stop(self) -> None:
        for name, p in reversed(list(self.procs.items())):
            stop_process(p)
            del self.procs[name]
        if self.cluster is not None:
            self.cluster.stop()

    def _wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} (logs in {self.workdir})")
            if pred():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s (logs in {self.workdir})")
