"""What online tracking costs GET /recommend: the same server with tracking on and off, in one run.

    python benchmarks/online_overhead.py --bundle artifacts/bench-sasrec-ml1m     (make bench-serve)

Starts a private redis-server and two API processes (one uvicorn worker each) on the same
bundle and Redis, identical except SEQREC_ONLINE_TRACKING; writes `--users` histories, then
alternates closed-loop GET /recommend windows between the two servers (`--rounds` times each,
so drifts of a shared machine hit both alike) and compares p50 latency and server CPU per
request. Target: tracking costs at most 10% of the p50. Uses the load generator of
benchmarks/serve_load.py. Results: benchmarks/results/online_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.settings import Settings  # noqa: E402
from benchmarks.live_harness import processes, start_api, start_redis  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serve_load import post_events, recommend_load, tree_cpu  # noqa: E402

API_KEY = "bench-key"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-ms", type=float, default=None, help="SEQREC_ONLINE_BATCH_MS (default: the setting's).")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    suffix = f"-batch{args.batch_ms:g}ms" if args.batch_ms is not None else ""
    args.out = args.out or ROOT / "benchmarks" / "results" / f"online_overhead{suffix}.json"
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    with processes() as procs:
        url = start_redis(procs)
        for mode in ("off", "on"):
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "SEQREC_BUNDLES": str(args.bundle),
                "SEQREC_REDIS_URL": url,
                "SEQREC_API_KEY": API_KEY,
                "SEQREC_ACCESS_LOG": "false",
                "SEQREC_ONLINE_TRACKING": "true" if mode == "on" else "false",
            }
            if args.batch_ms is not None:
                env["SEQREC_ONLINE_BATCH_MS"] = str(args.batch_ms)
            else:
                env.pop("SEQREC_ONLINE_BATCH_MS", None)
            ports[mode] = start_api(procs, env)
            pids[mode] = procs[-1].pid
        items = json.loads((args.bundle / "item_ids.json").read_text())
        users = [f"bench-u{i}" for i in range(args.users)]
        asyncio.run(post_events(ports["off"], users, items, args.history, 2, API_KEY))
        for port in ports.values():
            asyncio.run(recommend_load(port, users, 2, 1.5))  # warm-up
        runs: dict[str, dict[int, list[dict]]] = {"off": {}, "on": {}}
        for _ in range(args.rounds):
            for c in args.conns:
                # ABBA order (off, on, on, off, ...): a drift of the shared machine hits both alike
                order = ("off", "on") if len(runs["off"].get(c, [])) % 2 == 0 else ("on", "off")
                for mode in order:
                    pid = pids[mode]
                    r = asyncio.run(recommend_load(ports[mode], users, c, args.seconds, lambda pid=pid: tree_cpu(pid)))
                    before, after = r.pop("cpu")
                    r["server_cpu_ms_per_request"] = round((after - before) / r["requests"] * 1e3, 4)
                    runs[mode].setdefault(c, []).append(r)
                    print(mode, c, r, flush=True)
    summary = {}
    for c in args.conns:
        off = [r["p50_ms"] for r in runs["off"][c]]
        on = [r["p50_ms"] for r in runs["on"][c]]
        cpu_off = statistics.median(r["server_cpu_ms_per_request"] for r in runs["off"][c])
        cpu_on = statistics.median(r["server_cpu_ms_per_request"] for r in runs["on"][c])
        paired = [b / a - 1 for a, b in zip(off, on, strict=True)]  # round by round
        summary[str(c)] = {
            "p50_ms_off": statistics.median(off),
            "p50_ms_on": statistics.median(on),
            "p50_overhead": round(statistics.median(on) / statistics.median(off) - 1, 3),
            "p50_overhead_per_round": [round(x, 3) for x in paired],
            "p50_overhead_median_of_rounds": round(statistics.median(paired), 3),
            "server_cpu_ms_per_request_off": cpu_off,
            "server_cpu_ms_per_request_on": cpu_on,
            "cpu_overhead": round(cpu_on / cpu_off - 1, 3),
            "errors": sum(r["errors"] for m in runs.values() for r in m[c]),
        }
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "cpus_used": sorted(os.sched_getaffinity(0)),  # taskset: client, servers and Redis share these
        "bundle": str(args.bundle),
        "online_batch_ms": Settings.model_fields["online_batch_ms"].default if args.batch_ms is None else args.batch_ms,
        "users": args.users,
        "history": args.history,
        "summary_by_connections": summary,
        "target": "tracking costs at most 10% of the GET /recommend p50",
        "runs": {m: {str(c): v for c, v in d.items()} for m, d in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
