"""What event types and the exclusion set cost the hot paths, before and after, on a real Redis.

    python -m benchmarks.serving.event_types_cost [--url redis://127.0.0.1:6379/0] [--baseline-ref REF]

The read of GET /recommend with the user cache on is one script call (app/stores/usercache.py
READ_LUA) that now also returns the user's exclusion set (KEYS[3]); without the cache the store's
read (RedisStore.read) is now one pipeline of the window's ZRANGE and the set's, instead of the
window's ZRANGE alone (RedisStore.history). The write of POST /events (app/stores/redis.py
APPEND_LUA) now also refreshes the set's TTL and, for excluding events, adds to it. Each shape runs
`--n` times in a row, in `--rounds` interleaved rounds after a warm-up round, and reports the
median over rounds of the client's CPU per call and of the wall time per call (Redis on this
machine, so wall includes the server's work). The "before" scripts are read from git at
`--baseline-ref` (the commit before event types). A 200-member window, a 272-byte cache entry, the
event log off.
Results: benchmarks/results/serving/event_types_cost.json, with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
from app.stores.redis import APPEND_LUA, RedisStore, append_args  # noqa: E402
from app.stores.usercache import READ_LUA  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "event_types_cost.json"


def script_at(ref: str, path: str, name: str) -> str:
    """The Lua script `name = \"\"\"...\"\"\"` of `path` as committed at `ref`."""
    text = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True)
    found = re.search(rf'^{name} = """(.*?)"""', text.stdout, re.S | re.M)
    if found is None:
        raise SystemExit(f"{name} not found in {path} at {ref}")
    return found.group(1).replace("\\\\", "\\")  # the file's Python escapes, as the module string has them


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> dict[str, float]:
    c, w = time.process_time(), time.perf_counter()
    for _ in range(n):
        await fn()
    return {
        "cpu_us": round((time.process_time() - c) / n * 1e6, 1),
        "wall_us": round((time.perf_counter() - w) / n * 1e6, 1),
    }


async def run(url: str, n: int, ref: str, rounds_n: int) -> dict[str, dict[str, float]]:
    from redis.asyncio import Redis

    r = Redis.from_url(url, decode_responses=False)
    p = "bench-et:"
    # x: the reads' exclusion set (empty); x50: one of 50 items; xa: the one the appends write.
    h, v, x, x50, xa = f"{p}h:u", f"{p}v:u:b", f"{p}x:u", f"{p}x:u50", f"{p}x:appends"
    await r.delete(h, v, x, x50, xa)
    await r.zadd(h, {f"e{i}\x1f{1000 + i}": i for i in range(200)})
    await r.set(v, b"x" * 272)
    await r.zadd(x50, {f"{5000 + i}": i for i in range(50)})
    old_read = await r.script_load(script_at(ref, "app/stores/usercache.py", "READ_LUA"))
    new_read = await r.script_load(READ_LUA)
    old_append = await r.script_load(script_at(ref, "app/stores/redis.py", "APPEND_LUA"))
    new_append = await r.script_load(APPEND_LUA)
    args = (200, 0, b"", 0)
    store = RedisStore(url, max_history=200, ttl_s=86400, prefix=p, event_log=None)
    seq = iter(range(10**9))

    async def pipe(keys: list[str]) -> None:
        pp = r.pipeline(transaction=False)
        for k in keys:
            if k == h:
                pp.zrange(k, -200, -1)
            else:
                pp.zrange(k, 0, -1)
        await pp.execute()

    def event() -> dict[str, float]:  # one new event per call: the window stays at 200 (trimmed)
        i = next(seq)
        return {f"n{i}\x1f{i % 3000}": 1000.0 + i}

    async def append_old() -> None:
        m = event()
        await r.evalsha(old_append, 1, h, 200, 86400, append_args(200, 86400, m)[2])

    async def append_new(excluding: bool) -> None:
        m = event()
        away = {next(iter(m)).rsplit("\x1f", 1)[1]: 1.0} if excluding else None
        await r.evalsha(new_append, 2, h, xa, *append_args(200, 86400, m, away, 1000))

    shapes: dict[str, Callable[[], Awaitable[Any]]] = {
        "cache read, before (READ_LUA, 2 keys)": lambda: r.evalsha(old_read, 2, h, v, *args),
        "cache read, after (READ_LUA + empty exclusion set)": lambda: r.evalsha(new_read, 3, h, v, x, *args),
        "cache read, after (READ_LUA + 50 excluded items)": lambda: r.evalsha(new_read, 3, h, v, x50, *args),
        "store read, before (ZRANGE: RedisStore.history)": lambda: store.history("u"),
        "store read, after (window + exclusion set: RedisStore.read)": lambda: store.read("u"),
        "store read, pipeline ZRANGE + ZRANGE": lambda: pipe([h, x]),
        "append 1 event, before (APPEND_LUA, log off)": append_old,
        "append 1 event, after (log off)": lambda: append_new(False),
        "append 1 dislike, after (log off)": lambda: append_new(True),
    }
    # Interleaved rounds, the median of each shape's rounds: the machine is shared, and a slow spell
    # then hits every shape alike instead of whichever ran during it. Round 0 warms up.
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in shapes}
    for rnd in range(rounds_n + 1):
        for name, fn in shapes.items():
            t = await timed(fn, n)
            if rnd:
                rounds[name].append(t)
    got = {
        name: {key: statistics.median(t[key] for t in ts) for key in ("cpu_us", "wall_us")}
        for name, ts in rounds.items()
    }
    for name, t in got.items():
        print(f"{name:52s} {t['cpu_us']:7.1f} us CPU {t['wall_us']:7.1f} us wall per call")
    await r.delete(h, v, x, x50, xa)
    await r.aclose()
    await store.close()
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--n", type=int, default=1000, help="calls per shape and round")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--baseline-ref", default="41d0763", help="git ref of the code before event types")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    got = asyncio.run(run(args.url, args.n, args.baseline_ref, args.rounds))
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "baseline_ref": args.baseline_ref,
        "calls_per_shape_and_round": args.n,
        "rounds": args.rounds,
        "statistic": "median over rounds of the per-call mean",
        "per_call": got,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
