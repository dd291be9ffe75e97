"""Cached user vectors on vs off, in the same run, under read:write mixes.

    python -m benchmarks.serving.user_cache --bundle BUNDLE --out benchmarks/results/serving/user_cache.json

One private redis-server and two `seqrec serve` instances (each `--workers` uvicorn workers)
on the same histories (`--users` x `--history` events written once): one with
SEQREC_USER_CACHE=true, one with false. Each mix (pure reads, 10 reads per write, 1 read per
write) is measured on both servers in alternation, `--repeats` times, with the same closed-loop
load (`--conns` keep-alive connections; a write is one POST /events of one new event for a
random user, a read GET /recommend/{user}?k=10 for a random user). Only one server is loaded at
a time. Before each mix a "cold" window runs on the cache-on server with every entry deleted
(no state yet); the other windows are warm. Reported: read and write requests/s, read latency
percentiles, server CPU per request, each worker's share of a core, the on/off ratio of each mix,
cold and warm (the result on a shared machine: both sides share conditions), and POST /events
throughput of each server (batches of 500, its own fresh users). With `--wrk`, `wrk` re-measures
the warm pure-read rate of both servers (random users, a Lua script) as a cross-check of the
load generator. With `--rate R`, the cache-on server is also offered the 10:1 mix at R requests/s
(open loop: latency at a fixed load, counted from each request's due time, rather than at
saturation, where a closed loop's latency is its connection count over the rate).

A GRU4Rec bundle (per-user recurrent state) or an HSTU bundle (per-user key/value cache, step.onnx)
is measured the same way; use `--history` below the bundle's max_len so that writes advance states
rather than slide the window (at max_len every write slides it: the next read re-encodes with
model.onnx). `--mixes 10_reads_per_write` measures that mix alone. The result records the bytes of
the user entries left in Redis at the end (`entry_bytes`: the state or cache, with the last list).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serving.serve_load import Conn, child_cpu, own_cpu, post_events, tree_cpu  # noqa: E402
from tests.support.procs import free_port, port_open, wait_for  # noqa: E402


def headline(ratios: dict, sizes: dict) -> str:
    """The index's line for a result: each mix's read rate on / off (and on / state off), entry bytes."""
    parts = []
    for mix, r in ratios.items():
        part = f"{mix}: reads/s on/off {r['reads_per_s_on_over_off']}"
        if "reads_per_s_on_over_state_off" in r:
            part += f", on/state-off {r['reads_per_s_on_over_state_off']}"
        parts.append(part)
    if sizes.get("strlen_median"):
        parts.append(f"entry {sizes['strlen_median']:,} B")
    return "; ".join(parts)


def wait_port(port: int, timeout: float = 90) -> None:
    wait_for(lambda: port_open(port), timeout, f"port {port}")


API_KEY = "bench-key"
PREFIX = "bench:"
STATE_OFF_PREFIX = "bench-state-off:"  # the --state-off server's own copy of the histories
MIXES = {"reads_only": 0.0, "10_reads_per_write": 1 / 11, "1_read_per_write": 0.5}


async def one_request(
    c: Conn, rng: random.Random, users: list[str], items: list[str], write_frac: float, event_id: str, query: str = ""
) -> tuple[bool, int]:
    """One request of a read:write mix for a random user: (whether it was a read, its status). A
    write is one POST /events of one new event, a read GET /recommend/{user}?k=10 (`query`: more
    parameters, e.g. `&filter=...`)."""
    u = rng.choice(users)
    if rng.random() < write_frac:
        ev = {"user_id": u, "item_id": rng.choice(items), "timestamp": time.time(), "event_id": event_id}
        body = json.dumps({"events": [ev]}).encode()
        status, _ = await c.request("POST", "/events", body, f"X-API-Key: {API_KEY}\r\n")
        return False, status
    status, _ = await c.request("GET", f"/recommend/{u}?k=10{query}")
    return True, status


async def mixed_load(
    port: int,
    users: list[str],
    items: list[str],
    write_frac: float,
    conns: int,
    seconds: float,
    seed: int,
    query: str = "",
) -> dict:
    """Closed loop; only requests that start and end inside the window count (after a 1 s warm-up)."""
    read_lat: list[float] = []
    writes = errors = 0
    start = time.perf_counter() + 1.0
    end = start + seconds

    async def worker(w: int) -> None:
        nonlocal writes, errors
        rng = random.Random(seed * 1000 + w)
        c = await Conn.open(port)
        n = 0
        while (t := time.perf_counter()) < end:
            n += 1
            is_read, status = await one_request(c, rng, users, items, write_frac, f"w{seed}-{w}-{n}", query)
            done = time.perf_counter()
            if t < start or done > end:
                continue
            if status != 200:
                errors += 1
            elif is_read:
                read_lat.append(done - t)
            else:
                writes += 1
        c.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    ms = np.array(read_lat) * 1e3
    return {
        "reads_per_s": round(len(read_lat) / seconds),
        "writes_per_s": round(writes / seconds),
        "read_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "read_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": errors,
    }


async def fixed_rate_load(
    port: int, users: list[str], items: list[str], write_frac: float, rate: float, conns: int, seconds: float, seed: int
) -> dict:
    """Open loop: request i is due at start + i / rate, whatever the answers before it did, and
    takes the first free connection of `conns`. Latency counts from the due time, so waiting for a
    connection or behind a slow answer is part of it (no coordinated omission)."""
    rng = random.Random(seed)
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await Conn.open(port))
    read_lat: list[float] = []
    writes = errors = 0
    n_total = int(rate * seconds)
    t0 = time.perf_counter() + 0.2

    async def one(i: int, due: float) -> None:
        nonlocal writes, errors
        c = await pool.get()
        try:
            is_read, status = await one_request(c, rng, users, items, write_frac, f"r{seed}-{i}")
            if status != 200:
                errors += 1
            elif is_read:
                read_lat.append(time.perf_counter() - due)
            else:
                writes += 1
        finally:
            pool.put_nowait(c)

    pending: set[asyncio.Task[None]] = set()
    # The generator's own pauses would count as the server's latency: no cyclic GC during the window
    # (its objects are short-lived; a full collection over thousands of tasks takes milliseconds).
    gc.collect()
    gc.disable()
    try:
        for i in range(n_total):
            due = t0 + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(one(i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    finally:
        gc.enable()
    elapsed = time.perf_counter() - t0
    while not pool.empty():
        pool.get_nowait().close()
    ms = np.array(read_lat) * 1e3
    return {
        "offered_requests_per_s": rate,
        "reads_per_s": round(len(read_lat) / elapsed),
        "writes_per_s": round(writes / elapsed),
        "read_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "read_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "read_max_ms": round(float(ms.max()), 2),
        "errors": errors,
    }


def start_server(
    bundle: Path,
    port: int,
    url: str,
    workers: int,
    cache: bool,
    log: Path,
    tree: Path = ROOT,
    state: bool = True,
    prefix: str = PREFIX,
) -> subprocess.Popen:
    """`seqrec serve` from `tree`; cache off also turns the pre-routed reads and writes off (the full
    recompute through FastAPI, as the service answered before either existed). state=False: the
    cache without per-user states (SEQREC_USER_STATE=false: cached vectors and lists only)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "SEQREC_KEY_PREFIX": prefix,
        "SEQREC_MAX_HISTORY": "200",
        "SEQREC_USER_CACHE": str(cache).lower(),
        "SEQREC_FAST_READS": str(cache).lower(),
        "SEQREC_USER_STATE": str(state).lower(),
    }
    cmd = [sys.executable, "-m", "training.cli", "serve", "--bundle", str(bundle), "--port", str(port)]
    cmd += ["--workers", str(workers), "--redis-url", url, "--api-key", API_KEY]
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


async def read_all(port: int, users: list[str], conns: int) -> None:
    """GET /recommend once for every user (conns connections)."""
    queue = list(users)

    async def worker() -> None:
        c = await Conn.open(port)
        while queue:
            await c.request("GET", f"/recommend/{queue.pop()}?k=10")
        c.close()

    await asyncio.gather(*(worker() for _ in range(conns)))


async def entry_bytes(url: str, sample: int = 500) -> dict:
    """Sizes of the user entries in Redis (up to `sample` of them): the string's length and Redis's
    own MEMORY USAGE of the key (with its overhead)."""
    from redis.asyncio import Redis

    r = Redis.from_url(url)
    keys = []
    async for k in r.scan_iter(match=f"{PREFIX}v:*", count=1000):
        keys.append(k)
        if len(keys) >= sample:
            break
    lengths = [int(await r.strlen(k)) for k in keys]
    usage = [int(await r.memory_usage(k) or 0) for k in keys]
    used = (await r.info("memory"))["used_memory"]
    await r.aclose()
    if not keys:
        return {"entries_sampled": 0}
    return {
        "entries_sampled": len(keys),
        "strlen_median": int(np.median(lengths)),
        "strlen_min": min(lengths),
        "strlen_max": max(lengths),
        "memory_usage_median": int(np.median(usage)),
        "redis_used_memory_at_end": used,
    }


async def drop_entries(url: str, prefix: str = PREFIX) -> int:
    from redis.asyncio import Redis

    r = Redis.from_url(url)
    keys = [k async for k in r.scan_iter(match=f"{prefix}v:*", count=1000)]
    if keys:
        await r.delete(*keys)
    await r.aclose()
    return len(keys)


def _helper(pid: int) -> bool:
    """multiprocessing's resource tracker, a child of the server that is not a worker."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
        return
    proc.kill()


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free port."""
    exe = shutil.which("redis-server")
    if not exe:
        sys.exit("redis-server not found")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


WRK_LUA = """
math.randomseed(7)
local items = {{items}}
local n = 0
request = function()
  n = n + 1
  local user = "bench-u" .. math.random(0, {n} - 1)
  if {every} > 0 and n % {every} == 0 then
    local body = '{"events":[{"user_id":"' .. user .. '","item_id":"' .. items[math.random(#items)]
      .. '","timestamp":' .. os.time() .. ',"event_id":"wrk-{port}-' .. n .. '"}]}'
    return wrk.format("POST", "/events", {["Content-Type"] = "application/json", ["X-API-Key"] = "{key}"}, body)
  end
  return wrk.format("GET", "/recommend/" .. user .. "?k=10")
end
"""


def run_wrk(port: int, users: int, conns: int, seconds: float, items: list[str], every: int = 0) -> dict | None:
    """wrk's own count of GET /recommend per second on random users (None without wrk); with
    `every` = 11, every 11th request is a POST /events of one new event (10 reads per write), and
    the read rate is 10/11 of wrk's request rate (its latency percentiles cover both kinds)."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    script = Path(f"/tmp/seqrec-uc-wrk-{port}-{every}.lua")
    quoted = ", ".join(json.dumps(i) for i in items[:200])
    lua = WRK_LUA.replace("{items}", quoted).replace("{n}", str(users)).replace("{every}", str(every))
    script.write_text(lua.replace("{port}", str(port)).replace("{key}", API_KEY))
    cmd = [exe, "-t1", f"-c{conns}", f"-d{int(seconds)}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    rps = [ln for ln in out.splitlines() if ln.startswith("Requests/sec:")]
    p99 = [ln for ln in out.splitlines() if ln.strip().startswith("99%")]
    bad = [ln for ln in out.splitlines() if "Non-2xx" in ln]
    total = float(rps[0].split()[1]) if rps else None
    share = 1.0 if not every else (every - 1) / every
    return {
        "reads_per_s": round(total * share) if total is not None else None,
        "requests_per_s": round(total) if total is not None else None,
        "p99_all_requests": p99[0].split()[1] if p99 else None,
        "non_2xx": int(bad[0].split()[-1]) if bad else 0,
        "command": " ".join(cmd),
    }


def post_catalogue(port: int, items: list[str]) -> float:
    """Every item gets `bucket` (uniform 0..9999, seeded): returns the share `bucket < 5000` keeps."""
    import httpx

    buckets = np.random.default_rng(3).integers(0, 10_000, size=len(items))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        for s in range(0, len(items), 1000):
            part = zip(items[s : s + 1000], buckets[s : s + 1000], strict=True)
            rows = [{"item_id": i, "bucket": int(b)} for i, b in part]
            r = c.post("/catalog/items", json={"items": rows}, headers={"X-API-Key": API_KEY})
            assert r.status_code == 200, r.text
    time.sleep(1)  # every worker polls the catalogue version (SEQREC_CATALOG_POLL_S)
    return float(np.mean(buckets < 5000))


def filter_windows(port: int, items: list[str], text: str, measured: Any, repeats: int) -> dict:
    """The 10:1 mix on one server, reads with the filter against reads without, alternating."""
    from urllib.parse import quote

    kept = post_catalogue(port, items)
    frac, query = MIXES["10_reads_per_write"], "&filter=" + quote(text)
    runs: dict[str, list[dict]] = {"none": [], "filtered": []}
    for q in ("", query):  # not counted: fills the user cache (written up front, never read yet) both ways
        measured("on", frac, 99, q)
    for rep in range(repeats):
        for name in ("none", "filtered") if rep % 2 == 0 else ("filtered", "none"):
            runs[name].append(measured("on", frac, 100 + rep, query if name == "filtered" else ""))
            print("filter", name, runs[name][-1], flush=True)
    med = {n: float(np.median([r["reads_per_s"] for r in v])) for n, v in runs.items()}
    p99 = {n: float(np.median([r["read_p99_ms"] for r in v])) for n, v in runs.items()}
    return {
        "filter": text,
        "kept_fraction": round(kept, 4),
        "runs": runs,
        "ratio": {
            "reads_per_s_filtered_over_none": round(med["filtered"] / med["none"], 3),
            "read_p99_filtered_over_none": round(p99["filtered"] / p99["none"], 3),
        },
    }


def sweep_rates(spec: str) -> list[float]:
    start, stop, step = (float(x) for x in spec.split(":"))
    return [float(r) for r in np.arange(start, stop + step / 2, step)]


def holds(windows: list[dict], p99_ms: float) -> bool:
    """A rate holds when every window keeps the p99 bound, serves what was offered, and errs never."""
    return all(
        w["read_p99_ms"] <= p99_ms
        and w["errors"] == 0
        and w["reads_per_s"] + w["writes_per_s"] >= 0.98 * w["offered_requests_per_s"]
        for w in windows
    )


def run_sweep(port: int, users: list[str], items: list[str], args: argparse.Namespace) -> dict:
    """Capacity of each mix: the highest offered rate that holds the p99 bound (open loop, warm).
    The sweep of a mix stops after two rates in a row that do not hold."""
    out: dict = {"p99_bound_ms": args.p99_ms, "rates": args.sweep}
    for mix, frac in (("reads_only", 0.0), ("10_reads_per_write", MIXES["10_reads_per_write"])):
        asyncio.run(read_all(port, users, args.conns))  # every entry warm before the mix
        steps, best, misses = [], None, 0
        for rate in sweep_rates(args.sweep):
            windows = [
                asyncio.run(fixed_rate_load(port, users, items, frac, rate, 64, args.seconds, rep))
                for rep in range(args.repeats)
            ]
            ok = holds(windows, args.p99_ms)
            steps.append({"offered_requests_per_s": rate, "holds": ok, "windows": windows})
            print("sweep", mix, rate, ok, [w["read_p99_ms"] for w in windows], flush=True)
            if ok:
                best, misses = rate, 0
            else:
                misses += 1
                if misses == 2:
                    break
        held = next((s for s in steps if s["offered_requests_per_s"] == best), None)
        out[mix] = {
            "capacity_requests_per_s": best,
            "reads_per_s_at_capacity": min(w["reads_per_s"] for w in held["windows"]) if held else None,
            "read_p99_ms_at_capacity": max(w["read_p99_ms"] for w in held["windows"]) if held else None,
            "steps": steps,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--conns", type=int, default=16, help="closed-loop connections")
    ap.add_argument("--seconds", type=float, default=8, help="length of each measuring window")
    ap.add_argument("--repeats", type=int, default=2, help="windows per mix and side")
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--history", type=int, default=200, help="events per user written up front")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers per server")
    ap.add_argument("--wrk", action="store_true", help="cross-check the warm pure-read rate with wrk")
    ap.add_argument("--ingest-conns", type=int, default=4, help="connections posting the ingestion batches")
    ap.add_argument(
        "--rate",
        type=float,
        default=0,
        help="also offer the 10:1 mix at this many requests/s (open loop, up to 64 connections) to the"
        " cache-on server, warm, `--repeats` windows: latency at a fixed load instead of at saturation",
    )
    ap.add_argument(
        "--sweep",
        default="",
        help="capacity: offer the cache-on server each of these request rates in turn (START:STOP:STEP, e.g."
        " 1000:8000:500), warm, `--repeats` windows each, for pure reads and the 10:1 mix; the capacity of a mix"
        " is the highest offered rate whose every window keeps the read p99 under --p99-ms, serves >= 98%% of"
        " what was offered and has no error",
    )
    ap.add_argument("--p99-ms", type=float, default=20.0, help="the p99 bound of --sweep's capacity, milliseconds")
    ap.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="serve the off side from this checkout (e.g. `git worktree add /tmp/base <commit>`): today's path"
        " as released, instead of this tree with the cache and the pre-routed paths off",
    )
    ap.add_argument(
        "--filter",
        help="also measure the 10:1 mix on the cache-on server with this filter on every read against none"
        " (items get `bucket`, uniform in 0..9999: 'bucket < 5000' keeps half)",
    )
    ap.add_argument("--filter-only", action="store_true", help="with --filter: measure only that (no other mixes)")
    ap.add_argument(
        "--mixes",
        default=",".join(MIXES),
        help=f"the read:write mixes to measure, comma-separated (default all: {', '.join(MIXES)})",
    )
    ap.add_argument(
        "--state-off",
        action="store_true",
        help="a third server, cache on with SEQREC_USER_STATE=false (cached vectors and lists, no per-user"
        " state or key/value cache), on its own copy of the histories, alternated with the other two",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serving/user_cache.json"))
    args = ap.parse_args()
    asked = [m for m in args.mixes.split(",") if m]
    if not asked or any(m not in MIXES for m in asked):
        ap.error(f"--mixes: unknown mix in {args.mixes!r}; known: {', '.join(MIXES)}")
    mixes = {m: MIXES[m] for m in asked}
    args.bundle = args.bundle.resolve()  # servers may run from another tree
    with contextlib.suppress(ImportError):  # the server's own loop; the load generator's too
        import uvloop

        uvloop.install()
    on_port, off_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    cross: dict = {}
    cross_mix: dict = {}
    fixed: list[dict] = []
    sweep: dict = {}
    filtered: dict = {}
    results: dict[str, list[dict]] = {}
    sizes: dict = {}
    with private_redis() as url:
        try:
            servers = {
                "on": start_server(
                    args.bundle, on_port, url, args.workers, True, Path(f"/tmp/seqrec-uc-on-{on_port}.log")
                ),
                "off": start_server(
                    args.bundle,
                    off_port,
                    url,
                    args.workers,
                    False,
                    Path(f"/tmp/seqrec-uc-off-{off_port}.log"),
                    (args.baseline_tree or ROOT).resolve(),
                ),
            }
            ports = {"on": on_port, "off": off_port}
            if args.state_off:
                ports["state_off"] = free_port()
                log = Path(f"/tmp/seqrec-uc-state-off-{ports['state_off']}.log")
                servers["state_off"] = start_server(
                    args.bundle, ports["state_off"], url, args.workers, True, log, state=False, prefix=STATE_OFF_PREFIX
                )
            procs += servers.values()
            for p in ports.values():
                wait_port(p)
            time.sleep(3)  # every worker loads the bundle
            items = json.loads((args.bundle / "item_ids.json").read_text())
            users = [f"bench-u{i}" for i in range(args.users)]
            ev = asyncio.run(post_events(on_port, users, items, args.history, 4, API_KEY))
            print("events", ev, flush=True)
            if args.state_off:  # the same events (post_events is seeded) under the third server's prefix
                asyncio.run(post_events(ports["state_off"], users, items, args.history, 4, API_KEY))
            # Ingestion of each server on its own fresh users (the state costs writes nothing: it is
            # advanced when read), 100 events each in batches of 500.
            ingest = {}
            for side in ("off", "on"):
                fresh = [f"ingest-{side}-u{i}" for i in range(args.users)]
                ingest[side] = asyncio.run(post_events(ports[side], fresh, items, 100, args.ingest_conns, API_KEY))
                print("ingest", side, ingest[side], flush=True)

            def measured(side: str, frac: float, seed: int, query: str = "") -> dict:
                pid = servers[side].pid
                c0, l0, w0, t0 = tree_cpu(pid), own_cpu(), child_cpu(pid), time.perf_counter()
                r = asyncio.run(mixed_load(ports[side], users, items, frac, args.conns, args.seconds, seed, query))
                w1, wall = child_cpu(pid), time.perf_counter() - t0
                n = (r["reads_per_s"] + r["writes_per_s"]) * args.seconds
                r["server_cpu_ms_per_request"] = round((tree_cpu(pid) - c0) / max(n, 1) * 1e3, 3)
                r["load_generator_cpu_s"] = round(own_cpu() - l0, 1)
                # Busy fraction of a core per worker over the window (warm-up included): how evenly
                # the workers share the connections (1.0 and 0.0 = one worker took them all).
                r["worker_core_use"] = sorted(
                    (round((w1[p] - w0.get(p, 0.0)) / wall, 2) for p in w1 if not _helper(p)),
                    reverse=True,
                )
                return r

            if args.filter:
                filtered = filter_windows(ports["on"], items, args.filter, measured, args.repeats)
            sides = ["off", "on", *(["state_off"] if args.state_off else [])]
            for mix, frac in mixes.items() if not args.filter_only else ():
                asyncio.run(drop_entries(url))
                results[f"cold_{mix}_cache_on"] = [measured("on", frac, 0)]
                print("cold", mix, results[f"cold_{mix}_cache_on"], flush=True)
                if args.state_off:  # its entries built by one read of every user, not measured
                    asyncio.run(drop_entries(url, STATE_OFF_PREFIX))
                    asyncio.run(read_all(ports["state_off"], users, args.conns))
                for rep in range(args.repeats):
                    # Alternate: neither side always goes first.
                    order = sides[rep % len(sides) :] + sides[: rep % len(sides)]
                    for side in order:
                        r = measured(side, frac, rep + 1)
                        results.setdefault(f"{mix}_cache_{side}", []).append(r)
                        print(mix, side, r, flush=True)
            if args.rate:
                asyncio.run(read_all(ports["on"], users, args.conns))  # warm again after the 1:1 windows
                fixed = []
                for rep in range(args.repeats):
                    frac = MIXES["10_reads_per_write"]
                    fixed.append(
                        asyncio.run(fixed_rate_load(ports["on"], users, items, frac, args.rate, 64, args.seconds, rep))
                    )
                    print("fixed rate", fixed[-1], flush=True)
            if args.sweep:
                sweep = run_sweep(ports["on"], users, items, args)
            if args.wrk:
                # After the 1:1 windows most entries are stale: read every user once first, so that
                # wrk re-measures the warm pure-read rate it is meant to cross-check.
                for side in ("off", "on"):
                    asyncio.run(read_all(ports[side], users, args.conns))
                cross = {
                    side: run_wrk(ports[side], args.users, args.conns, args.seconds, items) for side in ("off", "on")
                }
                for side in ("off", "on"):
                    asyncio.run(read_all(ports[side], users, args.conns))
                cross_mix = {
                    side: run_wrk(ports[side], args.users, args.conns, args.seconds, items, every=11)
                    for side in ("off", "on")
                }
                print("wrk 10:1", cross_mix, flush=True)
                print("wrk", cross, flush=True)
            sizes = asyncio.run(entry_bytes(url))
            print("entry bytes", sizes, flush=True)
        finally:
            for p in procs:
                stop(p)

    def med(key: str, field: str) -> float:
        return float(np.median([r[field] for r in results[key]]))

    if args.filter_only:
        results = {}
        out_f = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d", time.gmtime())}
        out_f |= {"machine": machine_info(), "cpu_affinity": sorted(os.sched_getaffinity(0)), **filtered}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out_f, indent=2) + "\n")
        print(json.dumps(filtered["ratio"], indent=2))
        return

    ratios = {
        mix: {
            "reads_per_s_on_over_off": round(
                med(f"{mix}_cache_on", "reads_per_s") / med(f"{mix}_cache_off", "reads_per_s"), 2
            ),
            "read_p99_on_over_off": round(
                med(f"{mix}_cache_on", "read_p99_ms") / med(f"{mix}_cache_off", "read_p99_ms"), 2
            ),
            "cpu_per_request_on_over_off": round(
                med(f"{mix}_cache_on", "server_cpu_ms_per_request")
                / med(f"{mix}_cache_off", "server_cpu_ms_per_request"),
                2,
            ),
        }
        for mix in mixes
    }
    for mix in mixes if args.state_off else ():  # what the per-user state adds to cached vectors and lists
        ratios[mix]["reads_per_s_on_over_state_off"] = round(
            med(f"{mix}_cache_on", "reads_per_s") / med(f"{mix}_cache_state_off", "reads_per_s"), 2
        )
        ratios[mix]["read_p99_on_over_state_off"] = round(
            med(f"{mix}_cache_on", "read_p99_ms") / med(f"{mix}_cache_state_off", "read_p99_ms"), 2
        )
        ratios[mix]["cpu_per_request_on_over_state_off"] = round(
            med(f"{mix}_cache_on", "server_cpu_ms_per_request")
            / med(f"{mix}_cache_state_off", "server_cpu_ms_per_request"),
            2,
        )
    for mix in mixes:  # cold: the first window after every entry was deleted, against the warm off side
        ratios[mix]["cold_reads_per_s_on_over_off"] = round(
            med(f"cold_{mix}_cache_on", "reads_per_s") / med(f"{mix}_cache_off", "reads_per_s"), 2
        )
        ratios[mix]["cold_read_p99_on_over_off"] = round(
            med(f"cold_{mix}_cache_on", "read_p99_ms") / med(f"{mix}_cache_off", "read_p99_ms"), 2
        )
    man = json.loads((args.bundle / "manifest.json").read_text())
    out = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # e.g. [0] under taskset -c 0: all on one core
        "conditions": "load generator, redis-server and both servers on the same machine; one server loaded at a time",
        "off_side": f"tree {args.baseline_tree}" if args.baseline_tree else "this tree, cache and pre-routed paths off",
        "state_off_side": "this tree, cache on, SEQREC_USER_STATE=false, its own copy of the histories"
        if args.state_off
        else None,
        "bundle": f"{man['model']} on {man.get('dataset')}: {man['num_items']} items, dim {man['dim']}, "
        f"max_len {man['max_len']}",
        "workers": args.workers,
        "connections": args.conns,
        "users": args.users,
        "history": args.history,
        "seconds_per_window": args.seconds,
        "events": ev,
        "entry_bytes": sizes,
        "ingest_events_per_s": {side: r["events_per_s"] for side, r in ingest.items()},
        "ingest": ingest,
        "fixed_rate_10_reads_per_write_warm_cache_on": fixed or None,
        "capacity_warm_cache_on": sweep or None,
        "wrk_reads_only_warm": cross if args.wrk else None,
        "wrk_10_reads_per_write_warm": cross_mix if args.wrk else None,
        "runs": results,
        "ratios_cache_on_over_off": ratios,
        "headline": headline(ratios, sizes),
        "filter_10_reads_per_write": filtered if args.filter else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
