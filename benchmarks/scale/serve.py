"""Serving a large catalogue: start-up, memory per worker, latency in the 10:1 mix, recall of the index.

    python -m benchmarks.scale.serve --bundle artifacts/sasrec-shop-L --out benchmarks/results/scale/serve-L.json

With a real bundle (e.g. SASRec trained on the L log of benchmarks/scale/generate.py, 1M items):
1. start-up of `seqrec serve --workers N` twice: cold (the index cache of this bundle emptied
   first, so the first worker builds the IVF index and the unit vectors and the others wait for
   them) and warm (the cache there); seconds from the launch until every worker logged
   "Application startup complete";
2. memory of each worker after the load below: RSS, and PSS (shared pages divided among the
   processes that map them: the memory-mapped item vectors and index count once per machine);
3. the 10:1 read:write mix, open loop, at rising offered rates until two rates in a row miss the
   p99 bound (benchmarks/serving/user_cache.py's sweep): the highest rate that holds it;
4. recall@10 of the served index against an exact search over the same item vectors, for user
   vectors of random histories through the bundle's model (seen items excluded as in a request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info
from benchmarks.serving.serve_load import post_events
from benchmarks.serving.user_cache import (
    API_KEY,
    MIXES,
    fixed_rate_load,
    holds,
    private_redis,
    read_all,
    start_server,
    stop,
    sweep_rates,
)
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
READY = '"msg": "serving '  # each worker logs it once its lifespan has loaded the bundles (app/main.py)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _memory(pid: int) -> dict[str, float]:
    """RSS and PSS of one process, MiB (/proc/<pid>/smaps_rollup)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].rstrip(":") in ("Rss", "Pss", "Shared_Clean", "Private_Dirty"):
            fields[parts[0].rstrip(":").lower() + "_mib"] = round(int(parts[1]) / 1024, 1)
    return fields


def _workers(server: subprocess.Popen, n: int) -> list[int]:
    """The worker processes of `seqrec serve` (uvicorn's children that serve), found by their memory."""
    pids = _children(server.pid)
    pids += [c for p in pids for c in _children(p)]
    sized = sorted(((_memory(p).get("rss_mib", 0.0), p) for p in pids), reverse=True)
    return [p for _, p in sized[:n]]


def start(bundle: Path, url: str, workers: int, log: Path) -> tuple[subprocess.Popen, int, float]:
    """Launch the server; seconds until every worker has finished its start-up."""
    port = free_port()
    t0 = time.perf_counter()
    server = start_server(bundle, port, url, workers, True, log)
    while log.read_text(errors="replace").count(READY) < workers:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        if time.perf_counter() - t0 > 900:
            raise SystemExit("server did not start within 15 minutes")
        time.sleep(0.05)
    return server, port, time.perf_counter() - t0


def index_cache(bundle: Path) -> Path:
    from app.bundles.index import cache_dir, files_key
    from app.bundles.manifest import read_manifest

    m = read_manifest(bundle)
    return cache_dir(files_key(sorted(m.files.items()), m.num_items, m.dim))


def recall(bundle_path: Path, queries: int, history: int, seed: int = 0) -> dict:
    """Served index against exact search, both over the bundle's vectors; seen items excluded."""
    from app.bundles.bundle import Bundle
    from app.bundles.index import ExactIndex

    t = time.perf_counter()
    b = Bundle.load(bundle_path, ann_threshold=20_000)
    load_s = time.perf_counter() - t
    n = len(b.item_ids)
    rng = np.random.default_rng(seed)
    pop = b.popular[: max(1000, n // 10)]
    hists = [rng.choice(pop, size=history, replace=False) for _ in range(queries)]
    users = b.user_vectors(hists)
    exact = ExactIndex(np.arange(1, n + 1, dtype=np.int64), np.asarray(b.vectors(np.arange(1, n + 1))))
    hits = 0
    served_ms, exact_ms = [], []
    for q, h in zip(users, hists, strict=True):
        t0 = time.perf_counter()
        got = b.index.search(q[None], 10, [h])[0][0]
        t1 = time.perf_counter()
        want = exact.search(q[None], 10, [h])[0][0]
        t2 = time.perf_counter()
        served_ms.append((t1 - t0) * 1e3)
        exact_ms.append((t2 - t1) * 1e3)
        hits += len(set(got.tolist()) & set(want.tolist()))
    return {
        "items": n,
        "index": type(getattr(b.index, "base", b.index)).__name__,
        "queries": queries,
        "recall_at_10": round(hits / (10 * queries), 4),
        "served_search_p50_ms": round(float(np.percentile(served_ms, 50)), 3),
        "exact_search_p50_ms": round(float(np.percentile(exact_ms, 50)), 3),
        "in_process_load_s_warm_cache": round(load_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="A bundle directory (a large catalogue).")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers of the server")
    ap.add_argument("--users", type=int, default=2000, help="users written up front")
    ap.add_argument("--history", type=int, default=50, help="events per user written up front")
    ap.add_argument("--sweep", default="100:1500:100", help="offered rates of the 10:1 mix, start:stop:step")
    ap.add_argument("--p99-ms", type=float, default=20.0, help="the p99 bound of the sweep, milliseconds")
    ap.add_argument("--seconds", type=float, default=5, help="length of each measuring window")
    ap.add_argument("--queries", type=int, default=300, help="user vectors for the recall measurement")
    ap.add_argument("--out", type=Path, required=True, help="result file (JSON)")
    args = ap.parse_args()
    bundle = args.bundle.resolve()
    work = Path("/tmp/seqrec-scale-serve")
    work.mkdir(exist_ok=True)
    result: dict = {
        "benchmark": "scale.serve",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.scale.serve "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": machine_info(),
        "bundle": str(args.bundle),
        "workers": args.workers,
    }
    shutil.rmtree(index_cache(bundle), ignore_errors=True)
    ids = json.loads((bundle / "item_ids.json").read_text())
    rng = random.Random(0)
    items = [ids[rng.randrange(len(ids))] for _ in range(5000)]
    users = [f"bench-u{i}" for i in range(args.users)]
    with private_redis() as url:
        starts = {}
        for kind in ("cold", "warm"):
            server, port, secs = start(bundle, url, args.workers, work / f"{kind}.log")
            starts[kind] = round(secs, 2)
            print(kind, "start-up", secs, flush=True)
            if kind == "cold":
                stop(server)
        result["startup_s"] = starts
        asyncio.run(post_events(port, users, items, args.history, 4, API_KEY))
        asyncio.run(read_all(port, users, 16))
        frac = MIXES["10_reads_per_write"]
        steps, best, misses = [], None, 0
        for rate in sweep_rates(args.sweep):
            window = asyncio.run(fixed_rate_load(port, users, items, frac, rate, 64, args.seconds, int(rate)))
            ok = holds([window], args.p99_ms)
            steps.append({**window, "holds": ok})
            print("10:1 mix", rate, ok, window["read_p50_ms"], window["read_p99_ms"], flush=True)
            best, misses = (rate, 0) if ok else (best, misses + 1)
            if misses == 2:
                break
        held = next((s for s in steps if s["offered_requests_per_s"] == best), None)
        result["mix_10_to_1"] = {
            "p99_bound_ms": args.p99_ms,
            "capacity_requests_per_s": best,
            "reads_per_s_at_capacity": held["reads_per_s"] if held else None,
            "read_p50_ms_at_capacity": held["read_p50_ms"] if held else None,
            "read_p99_ms_at_capacity": held["read_p99_ms"] if held else None,
            "steps": steps,
        }
        result["memory_per_worker"] = [_memory(p) for p in _workers(server, args.workers)]
        stop(server)
    result["index_recall"] = recall(bundle, args.queries, args.history)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "mix_10_to_1")}, indent=1))


if __name__ == "__main__":
    main()
