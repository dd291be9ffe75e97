"""The docker-compose topology with local processes (no Docker engine needed), and a drive through it.

    python scripts/local_topology.py                                   # ML-1M, quick training
    python scripts/local_topology.py --dataset ml-100k --train-args "--epochs 1 --max-users 300"
    python scripts/local_topology.py --cluster ...                     # the compose profile `cluster`

1. redis-server with the compose config file (docker/redis.conf: AOF, appendfsync always,
   noeviction), on a free loopback port, its data in the work directory;
2. the training job: docker/train-job.sh itself (prepare -> train -> export -> publish symlink)
   into a bundle directory, the local stand-in for the `bundles` volume;
3. an api.env made from docker/api.env.example with a random key, and two API processes
   started by docker/serve-entrypoint.sh (the serving image's entrypoint) on two ports,
   sharing that Redis and the bundle directory, polling it for new bundles;
4. the drive: both ready on the same bundle; events written through one API are seen by the
   other; the training job runs again and both APIs switch to the new bundle without a
   restart (same PIDs); optionally the mixed load benchmark (--bench SECONDS).
With --cluster, step 1 is the compose profile `cluster` instead: a Redis Cluster of 3 masters and
3 replicas (scripts/local_cluster.py, each node on docker/redis-cluster.conf) and the APIs take its
redis+cluster:// URL.
Everything binds to 127.0.0.1 and is stopped at the end (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.local_cluster import ClusterProcs

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: object | None = None, headers: dict[str, str] | None = None) -> tuple:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


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
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    api_env: dict[str, str] = field(default_factory=dict)
    cluster: ClusterProcs | None = None  # set: a Redis Cluster instead of one redis-server

    @property
    def redis_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def bundle_root(self) -> Path:
        return self.workdir / "bundles"

    @property
    def api_key(self) -> str:
        return self.api_env["SEQREC_API_KEY"]

    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.api_ports]

    def start_redis(self) -> None:
        if self.cluster is not None:
            self.cluster.start()
            return
        data = self.workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("redis-server is not installed")
        cmd = [exe, str(DOCKER / "redis.conf"), "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        self.procs["redis"] = subprocess.Popen(
            cmd, cwd=data, stdout=(self.workdir / "redis.log").open("w"), stderr=subprocess.STDOUT
        )
        self._wait(lambda: self._port_open(self.redis_port), 20, "redis")

    def train(self, dataset: str, train_args: str, model: str = "sasrec") -> Path:
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
        }
        env.setdefault("SEQREC_CACHE_DIR", str(self.workdir / "cache"))
        subprocess.run(["sh", str(DOCKER / "train-job.sh")], cwd=ROOT, env=env, check=True)
        return (self.bundle_root / model).resolve()

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
                "HOST": "127.0.0.1",
                "PORT": str(port),
                **(extra_env or {}),
            }
            log = (self.workdir / f"api{i}.log").open("w")
            self.procs[f"api{i}"] = subprocess.Popen(
                ["sh", str(DOCKER / "serve-entrypoint.sh")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            self.api_ports.append(port)
        for base in self.bases():
            self._wait(lambda base=base: self._ready(base), 120, f"API {base}")

    def stop(self) -> None:
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            del self.procs[name]
        if self.cluster is not None:
            self.cluster.stop()

    def _ready(self, base: str) -> bool:
        try:
            return http_json("GET", f"{base}/readyz")[0] == 200
        except OSError:
            return False

    @staticmethod
    def _port_open(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} (logs in {self.workdir})")
            if pred():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s (logs in {self.workdir})")


def check(cond: bool, what: str, results: dict) -> None:
    results["checks"].append({"check": what, "ok": bool(cond)})
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        raise SystemExit(f"check failed: {what}")


def drive(topo: Topology, dataset: str, train_args: str, retrain: bool, results: dict) -> None:
    a, b = topo.bases()
    key = {"X-API-Key": topo.api_key}
    versions = {base: http_json("GET", f"{base}/readyz")[1]["bundles"][0]["version"] for base in (a, b)}
    check(len(set(versions.values())) == 1, "both APIs serve the same bundle", results)
    bundle = (topo.bundle_root / "sasrec").resolve()
    items = json.loads((bundle / "item_ids.json").read_text())[:8]

    events = [{"user_id": "topo-user", "item_id": it, "timestamp": 1_700_000_000 + n} for n, it in enumerate(items)]
    status, body = http_json("POST", f"{a}/events", {"events": events}, key)
    check(status == 200 and body["accepted"] == len(items), "events accepted by API 1", results)
    status, _ = http_json("POST", f"{b}/events", {"events": events[:1]})
    check(status == 401, "writes without the key from api.env are refused (401)", results)
    _, ra = http_json("GET", f"{a}/recommend/topo-user?k=10")
    _, rb = http_json("GET", f"{b}/recommend/topo-user?k=10")
    check(rb["source"] == "model" and rb["history_length"] == len(items), "API 2 sees API 1's events", results)
    check([x["item_id"] for x in ra["items"]] == [x["item_id"] for x in rb["items"]], "same answer on both", results)

    if retrain:
        pids = {name: p.pid for name, p in topo.procs.items()}
        old = versions[a]
        time.sleep(1.1)  # export names carry a second-resolution timestamp
        new_path = topo.train(dataset, train_args)
        new = json.loads((new_path / "manifest.json").read_text()).get("version")
        deadline = time.monotonic() + 60
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = {base: http_json("GET", f"{base}/readyz")[1]["bundles"][0]["version"] for base in (a, b)}
            if all(v == new for v in seen.values()):
                break
            time.sleep(0.5)
        check(old != new and all(v == new for v in seen.values()), "both APIs picked up the new bundle", results)
        check({n: p.pid for n, p in topo.procs.items()} == pids, "without a restart (same PIDs)", results)
        _, rb = http_json("GET", f"{b}/recommend/topo-user?k=10")
        check(rb["version"] == new and rb["history_length"] == len(items), "history kept across the swap", results)
        releases = sorted(p.name for p in (topo.bundle_root / "releases").iterdir())
        results["releases"] = releases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--train-args", default="--epochs 1 --max-users 1500")
    ap.add_argument("--workers-per-api", type=int, default=1)
    ap.add_argument("--no-retrain", action="store_true", help="Skip the second training run.")
    ap.add_argument("--bench", type=float, default=0, help="Then run the mixed load for this many seconds.")
    ap.add_argument("--bench-out", type=Path, default=ROOT / "benchmarks/results/mixed_load")
    ap.add_argument("--cluster", action="store_true", help="A 3-master, 3-replica Redis Cluster instead of one Redis.")
    ap.add_argument("--workdir", type=Path, default=None, help="Keep everything here (default: a temp dir, removed).")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="seqrec-topology-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cluster and args.bench:
        ap.error("--bench drives one Redis; for the cluster run benchmarks/cluster_load.py")
    topo = Topology(workdir, workers_per_api=args.workers_per_api)
    if args.cluster:
        topo.cluster = ClusterProcs(workdir / "cluster", node_timeout_ms=5000, conf=DOCKER / "redis-cluster.conf")
    results: dict = {"workdir": str(workdir), "checks": []}
    try:
        topo.start_redis()
        where = f"Redis Cluster {topo.cluster.ports}" if topo.cluster else f"redis-server on {topo.redis_port}"
        print(f"{where} (compose config)", flush=True)
        topo.train(args.dataset, args.train_args)
        topo.write_api_env()
        topo.start_apis()
        print(f"APIs on {topo.api_ports}", flush=True)
        drive(topo, args.dataset, args.train_args, not args.no_retrain, results)
        if args.bench:
            sys.path.insert(0, str(ROOT))
            from benchmarks.mixed_load import run_and_report

            run_and_report(topo, args.bench, args.bench_out, " ".join(["python", *sys.argv]))
    finally:
        topo.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
