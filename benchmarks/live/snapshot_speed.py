"""How fast `seqrec snapshot` streams the event store out of Redis.

    flock /tmp/seqrec-cpu.lock python -m benchmarks.live.snapshot_speed --users 10000 --events 100

Fills a private redis-server with `--users` histories of `--events` events each, in the
store's own layout (one sorted set per user, member `event_id \\x1f item_id`, score = time),
then runs the `seqrec snapshot` command (a fresh process, so start-up counts) to Parquet and
to CSV, checks the row count, and records the wall time and the snapshot's peak memory.
Results: benchmarks/results/live/snapshot_speed.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.live.live_harness import processes, start_redis  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402


def fill(url: str, prefix: str, users: int, events: int) -> float:
    import redis

    r = redis.Redis.from_url(url)
    rng = random.Random(0)
    t = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for u in range(users):
        mapping = {f"e{u}-{n}\x1f{rng.randrange(50_000)}": 1.7e9 + n * 60 + rng.random() for n in range(events)}
        pipe.zadd(f"{prefix}h:user-{u}", mapping)
        if u % 200 == 199:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - t


def run_snapshot(url: str, out: Path) -> dict[str, float]:
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "training.cli", "snapshot", "--redis-url", url, "--out", str(out), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t
    res = json.loads(p.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    return {
        "wall_seconds": round(wall, 2),
        "snapshot_seconds": res["seconds"],
        "events": res["events"],
        "users": res["users"],
        "bytes": out.stat().st_size,
        "children_peak_rss_mb": round(peak_mb),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "snapshot_speed.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seqrec-snap-"))
    with processes() as procs:
        url = start_redis(procs)
        fill_s = fill(url, "seqrec:", args.users, args.events)
        total = args.users * args.events
        runs = {}
        for name in ("events.parquet", "events.csv"):
            r = run_snapshot(url, work / name)
            if r["events"] != total:
                raise SystemExit(f"{name}: {r['events']} events written, {total} stored")
            r["events_per_s"] = round(total / r["snapshot_seconds"])
            runs[name.split(".")[1]] = r
            print(name, r, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "users": args.users,
        "events_per_user": args.events,
        "events": total,
        "fill_seconds": round(fill_s, 1),
        "snapshot": runs,
        "target": "1,000,000 events in under 60 s",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
