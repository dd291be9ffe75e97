"""Client CPU of the user-state read and write shapes on a real Redis (redis-py, asyncio, uvloop).

    python -m benchmarks.serving.redis_read_cost [--url redis://127.0.0.1:6379/0]

A 200-member history and a 272-byte entry (a dim-64 cached vector) under a throwaway prefix;
each shape runs `--n` times in a row, twice, and prints the process CPU per call: a bare ZRANGE,
the two-command pipeline (ZRANGE + HGET / GET) the first cache version used, the one-script read
(app/serving/usercache.py READ_LUA), and the writes (HSET + EXPIRE pipeline vs SET .. EX).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
from app.stores.usercache import READ_LUA  # noqa: E402


async def run(url: str, n: int) -> None:
    from redis.asyncio import Redis

    r = Redis.from_url(url, decode_responses=False)
    k, v, hv = "bench-rc:h:u1", "bench-rc:v:u1:b", "bench-rc:hv:u1"
    await r.delete(k, v, hv)
    await r.zadd(k, {f"e{i}\x1f{1000 + i}": i for i in range(200)})
    await r.set(v, b"x" * 272)
    await r.hset(hv, "b", b"x" * 272)
    sha = await r.script_load(READ_LUA)

    async def zrange() -> None:
        await r.zrange(k, -200, -1)

    async def pipe_hget() -> None:
        p = r.pipeline(transaction=False)
        p.zrange(k, -200, -1)
        p.hget(hv, "b")
        await p.execute(raise_on_error=False)

    async def script() -> None:
        await r.evalsha(sha, 3, k, v, "bench-rc:x:u1", 200, 0, b"", 0)

    async def hset_expire() -> None:
        p = r.pipeline(transaction=False)
        p.hset(hv, "b", b"y" * 272)
        p.expire(hv, 86400)
        await p.execute(raise_on_error=True)

    async def set_ex() -> None:
        await r.set(v, b"y" * 272, ex=86400)

    shapes = {
        "zrange": zrange,
        "pipeline zrange+hget": pipe_hget,
        "script zrange+get": script,
        "pipeline hset+expire": hset_expire,
        "set ex": set_ex,
    }
    for rnd in range(2):
        for name, fn in shapes.items():
            c = time.process_time()
            for _ in range(n):
                await fn()
            print(f"round {rnd} {name:24s} {(time.process_time() - c) / n * 1e6:7.1f} us CPU per call")
    await r.delete(k, v, hv)
    await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(run(args.url, args.n))


if __name__ == "__main__":
    main()
