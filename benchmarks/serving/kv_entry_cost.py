"""What an HSTU key/value cache entry (~80 KB a user) costs the store path, against a cached vector.

    python -m benchmarks.serving.kv_entry_cost --out benchmarks/results/serving/kv_entry_cost.json

A private redis-server; a 200-member history and one user's entry, as the service writes them
(app/serving/usercache.py `pack_entry`): the reference ML-1M HSTU's cache at 200 events (2 layers,
keys and values 50 wide, float16, no times: 80,220 bytes with the vector) with a stored list of 200
candidates, against a 216-byte cached vector (dim 50) with the same list. Each shape runs `--n`
times in a row, `--rounds` times, through redis-py's asyncio client (as the service): the client
process's CPU per call, the wall time per call, and Redis's own CPU per call (INFO cpu). Also the
service's own work on the entry: parsing it (`KvCache.parse`) and packing a new one. With `--bundle`
(an HSTU bundle), the service's user-vector paths in process (`UserCache.user_vector`, entries in
memory): a read after one new event, extended from a cache of `--events` (kv cache) or re-encoded
by model.onnx (cached vector, SEQREC_USER_STATE=false), and the step graph and model.onnx alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from app.bundles.manifest import KvCacheSpec  # noqa: E402
from app.serving.usercache import Answer, KvCache, pack_entry, vector_base  # noqa: E402
from app.stores.usercache import READ_LUA, state_check  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serving.user_cache import private_redis  # noqa: E402

LAYERS, WIDTH, DIM, EVENTS, CANDIDATES = 2, 50, 50, 200, 200


def entries(tag: bytes, first: bytes, last: bytes) -> dict[str, bytes]:
    """The two entry kinds, each with a stored list under the check the read script computes."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((LAYERS, 1, EVENTS, WIDTH)).astype(np.float16)
    v = rng.standard_normal((LAYERS, 1, EVENTS, WIDTH)).astype(np.float16)
    vec = rng.standard_normal((1, DIM)).astype(np.float32)
    answer = Answer(np.arange(1, CANDIDATES + 1), np.linspace(20, 5, CANDIDATES).astype(np.float32), EVENTS)
    check = state_check(tag, EVENTS, first, last)
    kv = KvCache(b"d" * 16, EVENTS, k, v, None, vec).to_bytes()
    return {"kv_cache": pack_entry(check, kv, answer), "vector": pack_entry(check, vector_base(b"d" * 16, vec), answer)}


async def measure(url: str, n: int, rounds: int) -> dict:
    from redis.asyncio import Redis

    r = Redis.from_url(url, decode_responses=False)
    h, x = "bench-kv:h:u1", "bench-kv:x:u1"
    members = {f"e{i}\x1f{1000 + i}": 1_700_000_000 + i for i in range(EVENTS)}
    await r.zadd(h, members)
    names = list(members)
    tag = b"ab" * 32
    blobs = entries(tag, names[0].encode(), names[-1].encode())
    for kind, blob in blobs.items():
        await r.set(f"bench-kv:v:u1:{kind}", blob)
    sha = await r.script_load(READ_LUA)

    def read(kind: str, listed: bool):  # (the service's read: the history and the entry, or the list alone)
        async def call() -> None:
            args = (EVENTS, 0, tag, 10) if listed else (EVENTS, 0, b"", 0)
            got = await r.evalsha(sha, 3, h, f"bench-kv:v:u1:{kind}", x, *args)
            assert (got[0] == 0) == listed

        return call

    def write(kind: str):
        async def call() -> None:
            await r.set(f"bench-kv:w:u1:{kind}", blobs[kind], ex=86400)

        return call

    shapes = {
        "read: history + entry, cached vector": read("vector", False),
        "read: history + entry, kv cache": read("kv_cache", False),
        "read: list alone, cached vector": read("vector", True),
        "read: list alone, kv cache": read("kv_cache", True),
        "write: SET EX, cached vector": write("vector"),
        "write: SET EX, kv cache": write("kv_cache"),
    }

    async def redis_cpu() -> float:
        info = await r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    out: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for name, fn in shapes.items():
            c, w, s = time.process_time(), time.perf_counter(), await redis_cpu()
            for _ in range(n):
                await fn()
            server = await redis_cpu() - s
            out.setdefault(name, []).append(
                {
                    "client_cpu_us": round((time.process_time() - c) / n * 1e6, 1),
                    "wall_us": round((time.perf_counter() - w) / n * 1e6, 1),
                    "redis_cpu_us": round(server / n * 1e6, 1),
                }
            )
    await r.aclose()
    summary = {name: {f: float(np.median([x[f] for x in runs])) for f in runs[0]} for name, runs in out.items()}
    return {"entry_bytes": {k: len(v) for k, v in blobs.items()}, "runs": out, "median": summary, "blobs": blobs}


def parse_cost(blob: bytes, n: int) -> dict:
    """The service's own work on a kv entry: parse it (zero-copy views) and pack a new one."""
    spec = KvCacheSpec(
        kind="kv_cache",
        file="step.onnx",
        inputs=["cache_k", "cache_v", "item_seq"],
        outputs=["cache_k_out", "cache_v_out", "user_vec"],
        cache_shape=[LAYERS, WIDTH, WIDTH],
        cache_dtype="float16",
        max_len=EVENTS,
    )
    bundle = SimpleNamespace(manifest=SimpleNamespace(incremental=spec), dim=DIM, max_len=EVENTS)
    got = KvCache.parse(blob, bundle)  # type: ignore[arg-type]
    assert got is not None and got.n == EVENTS
    t = time.process_time()
    for _ in range(n):
        KvCache.parse(blob, bundle)  # type: ignore[arg-type]
    parse = (time.process_time() - t) / n * 1e6
    k, v = np.array(got.k), np.array(got.v)
    t = time.process_time()
    for _ in range(n):
        pack_entry(b"", KvCache(b"d" * 16, EVENTS, k, v, None, got.vec).to_bytes(), None)
    pack = (time.process_time() - t) / n * 1e6
    return {"parse_us": round(parse, 1), "pack_us": round(pack, 1)}


def vector_paths(bundle_dir: Path, events: int, n: int, rounds: int) -> dict:
    """Process CPU per read of the user-vector paths of the service, in process, interleaved."""
    from prometheus_client import CollectorRegistry

    from app.bundles.bundle import Bundle
    from app.serving.usercache import Read, UserCache, step_session
    from app.stores import MemoryStore

    bundle = Bundle.load(bundle_dir)
    store = MemoryStore(max_history=1000, ttl_s=3600)
    kv = UserCache(store, True, 3600, CollectorRegistry())
    vectors = UserCache(store, True, 3600, CollectorRegistry(), rnn_state=False)  # SEQREC_USER_STATE=false
    rng = np.random.default_rng(1)
    seen = rng.integers(1, bundle.manifest.num_items + 1, size=events + 1)
    times = np.arange(events + 1, dtype=np.int64) + 1_700_000_000 if bundle.needs_times else None
    before = times[:-1] if times is not None else None

    def entry_after(cache: UserCache) -> bytes | None:  # what the read before the new event stored
        cache.user_vector("u", bundle, seen[:-1], Read([], None, None), before)
        got = cache.backend._entries.get(("u", bundle.name))  # type: ignore[attr-defined]
        return None if got is None else got[1]

    kv_entry, vec_entry = entry_after(kv), entry_after(vectors)
    step = step_session(bundle)
    assert step is not None, f"{bundle_dir} offers no kv_cache step"
    spec = KvCache.spec(bundle)
    old = KvCache.parse(kv_entry, bundle)
    assert old is not None and old.n == events
    feeds = {spec.inputs[0]: old.k, spec.inputs[1]: old.v, spec.inputs[-1 if not spec.times else 3]: seen[None, -1:]}
    if spec.times:
        assert old.times is not None and times is not None
        feeds |= {spec.inputs[2]: old.times[None], spec.inputs[4]: times[None, -1:]}
    shapes = {
        "read after 1 new event, kv cache (parse, step.onnx, pack)": lambda: kv.user_vector(
            "u", bundle, seen, Read([], None, kv_entry), times
        ),
        "read after 1 new event, cached vector (model.onnx)": lambda: vectors.user_vector(
            "u", bundle, seen, Read([], None, vec_entry), times
        ),
        "step.onnx alone": lambda: step.run(spec.outputs, feeds),
        "model.onnx alone": lambda: bundle.user_vectors([seen], None if times is None else [times]),
    }
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fn in shapes.items():
            t = time.process_time()
            for _ in range(n):
                fn()
            out.setdefault(name, []).append(round((time.process_time() - t) / n * 1e6, 1))
    return {
        "bundle": str(bundle_dir),
        "cached_events": events,
        "cpu_us_per_call": out,
        "median": {k: float(np.median(v)) for k, v in out.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="calls per shape and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bundle", type=Path, default=None, help="an HSTU bundle: also time the service's vector paths")
    ap.add_argument("--events", type=int, default=190, help="--bundle: events cached before the new one")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with private_redis() as url:
        got = asyncio.run(measure(url, args.n, args.rounds))
    blobs = got.pop("blobs")
    got["service_kv_entry"] = parse_cost(blobs["kv_cache"], args.n)
    if args.bundle is not None:
        got["service_vector_paths"] = vector_paths(args.bundle, args.events, max(100, args.n // 10), args.rounds)
        print(json.dumps(got["service_vector_paths"]["median"], indent=2))
    result = {
        "command": " ".join(["python", "-m", "benchmarks.serving.kv_entry_cost", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "conditions": "redis-server and the client on the same machine; one connection, calls in a row",
        "entry": f"HSTU kv cache: {LAYERS} layers x {EVENTS} events x (K {WIDTH} + V {WIDTH}) float16 + vector "
        f"{DIM} float32; cached vector: {DIM} float32; both with a stored list of {CANDIDATES} candidates",
        **got,
    }
    med = got["median"]
    result["headline"] = (
        f"read of history + entry: kv cache {med['read: history + entry, kv cache']['wall_us']:.0f} us"
        f" vs vector {med['read: history + entry, cached vector']['wall_us']:.0f} us"
    )
    print(json.dumps({"entry_bytes": got["entry_bytes"], **got["median"], **got["service_kv_entry"]}, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
