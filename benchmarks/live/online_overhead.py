"""What online tracking costs GET /recommend: the same server with tracking on and off, in one run.

    python -m benchmarks.live.online_overhead --bundle artifacts/bench-sasrec-ml1m     (make bench-serve)
    python -m benchmarks.live.online_overhead --bundle ... --before-root /path/to/other/checkout

Starts a private redis-server and two API processes (one uvicorn worker each) on the same
bundle and Redis, identical except SEQREC_ONLINE_TRACKING; writes `--users` histories, then
alternates closed-loop GET /recommend windows between the servers (`--rounds` times each, the
order reversed every other round, so drifts of a shared machine hit all alike) and compares p50
latency and server CPU per request. With `--before-root`, two more servers run the `app/` of
another checkout (e.g. the previous commit's), tracking off and on, in the same windows: the
tracking's cost before and after a change, each against its own code without tracking, side by
side. Target: tracking costs at most 10% of the p50.

On a shared machine the servers' CPU per request drifts by tens of percent between windows, more
than the tracking costs; `--direct N` also measures the tracking alone, more precisely: a process
of each checkout calls `Live.served` N times (16 answers per 10 ms, written to the same private
Redis in batches, as a server does), in alternating rounds; its CPU per answer, and the Redis
server's, are the tracking's whole cost.
Uses the load generator of benchmarks/serving/serve_load.py. Results: benchmarks/results/live/online_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
from app.settings import Settings  # noqa: E402
from benchmarks.live.live_harness import processes, start_redis  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serving.serve_load import post_events, recommend_load, tree_cpu  # noqa: E402
from tests.support.procs import free_port, port_open, wait_for  # noqa: E402

API_KEY = "bench-key"

# The tracking alone, in a fresh process of one checkout (its app/ first on sys.path): N answers,
# 16 every 10 ms, as a loaded server batches them; prints the process's CPU seconds.
DIRECT = """
import asyncio, sys, time
root, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
from app.runtime.metrics import Metrics
from app.serving.online import make_live
from app.settings import Settings
from app.stores.redis import RedisStore

async def main():
    store = RedisStore(url, max_history=10, ttl_s=60, prefix="direct:")
    live = make_live(Settings(bundles=[root], redis_url=url, key_prefix="direct:"), store, Metrics(), lambda: ["A"])
    items = [str(i) for i in range(1000, 1010)]
    for i in range(160):
        live.served(f"warm-{i}", "A", "default", items)
    await live.drain()
    c0 = time.process_time()
    for i in range(n // 16):
        for j in range(16):
            live.served(f"user-{i * 16 + j}", "A", "default", items)
        await asyncio.sleep(0.01)
    await live.drain()
    print(time.process_time() - c0)
    await store.close()

asyncio.run(main())
"""


def direct(url: str, redis_pid: int, roots: dict[str, Path], answers: int, rounds: int) -> dict[str, dict]:
    """CPU per answer of the tracking alone: the process's and the Redis server's, per checkout."""
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in roots}
    for r in range(rounds):
        for mode in list(roots) if r % 2 == 0 else list(roots)[::-1]:
            before = tree_cpu(redis_pid)
            out = subprocess.run(
                [sys.executable, "-c", DIRECT, str(roots[mode]), url, str(answers)],
                cwd=roots[mode],
                capture_output=True,
                text=True,
                check=True,
            )
            redis_cpu = tree_cpu(redis_pid) - before
            runs[mode].append((float(out.stdout.strip()) / answers * 1e6, redis_cpu / answers * 1e6))
            print("direct", mode, runs[mode][-1], flush=True)
    return {
        mode: {
            "process_us_per_answer": round(statistics.median(p for p, _ in v), 2),
            "redis_us_per_answer": round(statistics.median(q for _, q in v), 2),
            "rounds": [[round(p, 2), round(q, 2)] for p, q in v],
        }
        for mode, v in runs.items()
    }


def start_server(procs: list[subprocess.Popen], env: dict[str, str], root: Path) -> int:
    """One uvicorn worker of `root`'s app (run in `root`: `python -m` puts the working directory
    first on sys.path, so that checkout's app/ is the one imported); returns its port."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    procs.append(subprocess.Popen(cmd, cwd=root, env={**env, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL))
    wait_for(lambda: port_open(port), 120, f"the API on port {port}")
    return port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-ms", type=float, default=None, help="SEQREC_ONLINE_BATCH_MS (default: the setting's).")
    ap.add_argument(
        "--before-root",
        type=Path,
        default=None,
        help="Another checkout (its app/ is served too, tracking off and on: modes `before_off`, `before`).",
    )
    ap.add_argument("--direct", type=int, default=0, help="Also time the tracking alone over N answers (see above).")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    suffix = f"-batch{args.batch_ms:g}ms" if args.batch_ms is not None else ""
    args.out = args.out or ROOT / "benchmarks" / "results" / f"online_overhead{suffix}.json"
    modes = ["off", "on"] + (["before_off", "before"] if args.before_root else [])
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    with processes() as procs:
        url = start_redis(procs)
        for mode in modes:
            env = {
                **os.environ,
                "SEQREC_BUNDLES": str(args.bundle.resolve()),
                "SEQREC_REDIS_URL": url,
                "SEQREC_API_KEY": API_KEY,
                "SEQREC_ACCESS_LOG": "false",
                "SEQREC_ONLINE_TRACKING": "false" if mode.endswith("off") else "true",
            }
            if args.batch_ms is not None:
                env["SEQREC_ONLINE_BATCH_MS"] = str(args.batch_ms)
            else:
                env.pop("SEQREC_ONLINE_BATCH_MS", None)
            ports[mode] = start_server(procs, env, args.before_root.resolve() if mode.startswith("before") else ROOT)
            pids[mode] = procs[-1].pid
        items = json.loads((args.bundle / "item_ids.json").read_text())
        users = [f"bench-u{i}" for i in range(args.users)]
        asyncio.run(post_events(ports["off"], users, items, args.history, 2, API_KEY))
        for port in ports.values():
            asyncio.run(recommend_load(port, users, 2, 1.5))  # warm-up
        redis_pid = procs[0].pid
        roots = {"on": ROOT} | ({"before": args.before_root.resolve()} if args.before_root else {})
        tracking_alone = direct(url, redis_pid, roots, args.direct, args.rounds) if args.direct else None
        runs: dict[str, dict[int, list[dict]]] = {m: {} for m in modes}
        for _ in range(args.rounds):
            for c in args.conns:
                # the order reversed every other round (off, on, on, off, ...): a drift of the shared
                # machine hits every mode alike
                order = modes if len(runs["off"].get(c, [])) % 2 == 0 else modes[::-1]
                for mode in order:
                    pid = pids[mode]
                    r = asyncio.run(recommend_load(ports[mode], users, c, args.seconds, lambda pid=pid: tree_cpu(pid)))
                    before, after = r.pop("cpu")
                    r["server_cpu_ms_per_request"] = round((after - before) / r["requests"] * 1e3, 4)
                    runs[mode].setdefault(c, []).append(r)
                    print(mode, c, r, flush=True)
    summary = {}
    for c in args.conns:
        p50 = {m: [r["p50_ms"] for r in runs[m][c]] for m in modes}
        cpu = {m: statistics.median(r["server_cpu_ms_per_request"] for r in runs[m][c]) for m in modes}
        row = {
            "p50_ms_off": statistics.median(p50["off"]),
            "p50_ms_on": statistics.median(p50["on"]),
            "p50_overhead": round(statistics.median(p50["on"]) / statistics.median(p50["off"]) - 1, 3),
            # round by round
            "p50_overhead_per_round": [round(b / a - 1, 3) for a, b in zip(p50["off"], p50["on"], strict=True)],
            "server_cpu_ms_per_request_off": cpu["off"],
            "server_cpu_ms_per_request_on": cpu["on"],
            "cpu_overhead": round(cpu["on"] / cpu["off"] - 1, 3),
            "errors": sum(r["errors"] for m in runs.values() for r in m[c]),
        }
        row["p50_overhead_median_of_rounds"] = round(statistics.median(row["p50_overhead_per_round"]), 3)
        if "before" in modes:
            base = statistics.median(p50["before_off"])
            row["p50_ms_before_off"] = base
            row["p50_ms_before"] = statistics.median(p50["before"])
            row["p50_overhead_before"] = round(statistics.median(p50["before"]) / base - 1, 3)
            row["p50_overhead_before_per_round"] = [
                round(b / a - 1, 3) for a, b in zip(p50["before_off"], p50["before"], strict=True)
            ]
            row["p50_overhead_before_median_of_rounds"] = round(
                statistics.median(row["p50_overhead_before_per_round"]), 3
            )
            row["server_cpu_ms_per_request_before_off"] = cpu["before_off"]
            row["server_cpu_ms_per_request_before"] = cpu["before"]
            row["cpu_overhead_before"] = round(cpu["before"] / cpu["before_off"] - 1, 3)
        summary[str(c)] = row
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "cpus_used": sorted(os.sched_getaffinity(0)),  # taskset: client, servers and Redis share these
        "bundle": str(args.bundle),
        "online_batch_ms": Settings.model_fields["online_batch_ms"].default if args.batch_ms is None else args.batch_ms,
        "before_root": str(args.before_root) if args.before_root else None,
        "users": args.users,
        "history": args.history,
        "summary_by_connections": summary,
        "tracking_alone": tracking_alone,
        "target": "tracking costs at most 10% of the GET /recommend p50",
        "runs": {m: {str(c): v for c, v in d.items()} for m, d in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": summary, "tracking_alone": tracking_alone}, indent=2))


if __name__ == "__main__":
    main()
