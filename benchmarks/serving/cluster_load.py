"""One Redis against a Redis Cluster (3 masters + 3 replicas), same machine, one run; the cost of
WAIT; the failover timeline.

    flock /tmp/seqrec-cpu.lock python -m benchmarks.serving.cluster_load --seconds 8 --rounds 2
    (--bundle DIR to serve an exported bundle; default: a small SASRec trained on ML-100K first)

Stores: redis-server x 1 and redis-server --cluster-enabled yes x 6 (tests/support/cluster.py),
all without persistence, so what differs is the topology, not fsync. For each store one API
process (uvicorn, 1 worker) is started and driven over keep-alive connections (closed loop):
- POST /events: batches of 100 new events for 20 users (each batch spans every master);
- GET /recommend/{user}?k=10 for the users written before (a 50-event history each);
- on the cluster, POST /events again with SEQREC_REDIS_WAIT_REPLICAS=1 (WAIT 1 replica, 200 ms);
- the store alone (no HTTP, no API process): the same batches appended concurrently through
  RedisStore / ClusterStore (with and without WAIT), from this process.
Rounds alternate the stores, so machine noise lands on all of them alike; the median is reported.
Failover: one-event writes from 3 connections, then kill -9 of a master: the first 503, the
replica's promotion, the first write to the failed-over slots acknowledged again, and how many
acknowledged events the promoted replica lacks. The load generator shares the CPU with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serving.serve_load import Conn, free_port  # noqa: E402
from benchmarks.serving.user_cache import wait_port  # noqa: E402
from tests.support.cluster import ClusterProcs  # noqa: E402

KEY = "bench-key"
HEADER = f"X-API-Key: {KEY}\r\n"
BATCH, USERS_PER_BATCH, HISTORY = 100, 20, 50


def small_bundle(work: Path) -> Path:
    """A small SASRec on ML-100K (seconds on a CPU): the serving cost, not quality, is measured."""
    from training.data import prepare
    from training.data.readers import default_data_dir
    from training.export import export_bundle
    from training.train import train

    data = prepare("ml-100k", default_data_dir(), work / "cache")
    train(
        "sasrec",
        data,
        work / "run",
        model_overrides={"max_len": 50, "dim": 64, "num_layers": 2},
        train_overrides={"epochs": 1, "batch_size": 256},
        progress=False,
    )
    return export_bundle(work / "run" / "best.pt", work / "bundles", name="bench-sasrec")


class Api:
    def __init__(self, bundle: Path, redis_url: str, work: Path, **env: str) -> None:
        self.port = free_port()
        environ = {**os.environ, "PYTHONPATH": str(ROOT), "SEQREC_BUNDLES": str(bundle), "SEQREC_API_KEY": KEY}
        environ |= {"SEQREC_REDIS_URL": redis_url, "SEQREC_ACCESS_LOG": "false", **env}
        cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        log = (work / f"api-{self.port}.log").open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, 120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summary(lat: list[float], wall: float, per: int = 1) -> dict:
    ms = np.array(lat) * 1e3
    return {
        "requests": len(lat),
        "per_s": round(len(lat) / wall, 1),
        "items_per_s": round(len(lat) * per / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


async def write_load(port: int, items: list[str], conns: int, seconds: float, tag: str) -> tuple[dict, list[str]]:
    lat: list[float] = []
    errors: dict[int, int] = {}
    users: set[str] = set()
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        rng = random.Random(w)
        c = await Conn.open(port)
        n = 0
        while time.perf_counter() < stop:
            batch_users = [f"{tag}-{w}-{n}-{j}" for j in range(USERS_PER_BATCH)]
            evs = [
                {"user_id": u, "item_id": rng.choice(items), "event_id": f"e{k}", "timestamp": 1_700_000_000 + k}
                for u in batch_users
                for k in range(BATCH // USERS_PER_BATCH)
            ]
            t = time.perf_counter()
            status, _ = await c.request("POST", "/events", json.dumps({"events": evs}).encode(), HEADER)
            lat.append(time.perf_counter() - t)
            if status == 200:
                users.update(batch_users)
            else:
                errors[status] = errors.get(status, 0) + 1
            n += 1
        c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conns)))
    out = summary(lat, time.perf_counter() - t0, BATCH)
    out["errors"] = errors
    return out, sorted(users)


async def store_load(url: str, env: dict[str, str], items: list[str], conns: int, seconds: float, tag: str) -> dict:
    """The store alone (no HTTP): concurrent appends of the same batches, through the API's store classes."""
    from app.stores import ClusterStore, Event, RedisStore, is_cluster_url

    if is_cluster_url(url):
        wait = int(env.get("SEQREC_REDIS_WAIT_REPLICAS", "0"))
        store = ClusterStore(url, 200, 3600, prefix=f"s{tag}:", wait_replicas=wait, wait_timeout_ms=200)
    else:
        store = RedisStore(url, 200, 3600, prefix=f"s{tag}:")
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        rng = random.Random(w)
        n = 0
        while time.perf_counter() < stop:
            evs = [
                Event(f"{w}-{n}-{j}", rng.choice(items), 1_700_000_000 + k, f"e{k}")
                for j in range(USERS_PER_BATCH)
                for k in range(BATCH // USERS_PER_BATCH)
            ]
            t = time.perf_counter()
            await store.append(evs)
            lat.append(time.perf_counter() - t)
            n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conns)))
    wall = time.perf_counter() - t0
    await store.close()
    return summary(lat, wall, BATCH)


async def seed(port: int, users: list[str], items: list[str]) -> None:
    c = await Conn.open(port)
    rng = random.Random(0)
    for i in range(0, len(users), 10):
        evs = [
            {"user_id": u, "item_id": it, "event_id": f"h{t}", "timestamp": 1_600_000_000 + t}
            for u in users[i : i + 10]
            for t, it in enumerate(rng.choices(items, k=HISTORY))
        ]
        status, _ = await c.request("POST", "/events", json.dumps({"events": evs}).encode(), HEADER)
        assert status == 200, status
    c.close()


async def read_load(port: int, users: list[str], conns: int, seconds: float) -> dict:
    lat: list[float] = []
    sources: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        rng = random.Random(100 + w)
        c = await Conn.open(port)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status, body = await c.request("GET", f"/recommend/{rng.choice(users)}?k=10")
            lat.append(time.perf_counter() - t)
            src = json.loads(body).get("source", "?") if status == 200 else f"http {status}"
            sources[src] = sources.get(src, 0) + 1
        c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conns)))
    return {**summary(lat, time.perf_counter() - t0), "sources": sources}


async def failover(c: ClusterProcs, port: int, items: list[str], probe_prefix: str) -> dict:
    """kill -9 of a master under one-event writes; returns the timeline (ms after the kill)."""
    from app.stores import ClusterStore

    probe = ClusterStore(c.url, 5, 60, prefix=probe_prefix)
    await probe._topology()
    victim = c.master_ports()[0]
    users = [f"fo{i}" for i in range(60)]
    doomed = {u for u in users if probe._master(u).endswith(f":{victim}")}
    log: list[tuple[float, str, str, str, int]] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        conn = await Conn.open(port)
        n = 0
        while not stop.is_set():
            u, eid, item = users[n % len(users)], f"w{w}-{n}", items[n % len(items)]
            ev = {"user_id": u, "item_id": item, "event_id": eid, "timestamp": 1_700_000_000 + n}
            status, _ = await conn.request("POST", "/events", json.dumps({"events": [ev]}).encode(), HEADER)
            log.append((time.monotonic(), u, eid, item, status))
            n += 1
        conn.close()

    tasks = [asyncio.create_task(writer(i)) for i in range(3)]
    await asyncio.sleep(2.0)
    t_kill = time.monotonic()
    c.kill(victim)
    t_promoted = None
    while time.monotonic() - t_kill < 30:
        await asyncio.sleep(0.05)
        if t_promoted is None and len(await asyncio.to_thread(c.master_ports)) == 3:
            t_promoted = time.monotonic()
        if t_promoted and any(e[0] > t_promoted and e[1] in doomed and e[4] == 200 for e in log):
            break
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    after = [e for e in log if e[0] >= t_kill]
    bad = [e for e in after if e[4] != 200]
    last_bad = max((e[0] for e in bad), default=t_kill)
    back = [e[0] for e in after if e[1] in doomed and e[4] == 200 and e[0] > last_bad]
    acked = [e for e in log if e[4] == 200]
    lost = 0
    for e in acked:
        if f"{e[2]}\x1f{e[3]}" not in await raw_members(probe, e[1]):
            lost += 1
    await probe.close()
    ms = lambda t: round((t - t_kill) * 1000) if t is not None else None  # noqa: E731
    return {
        "cluster_node_timeout_ms": c.node_timeout_ms,
        "first_503_ms": ms(min((e[0] for e in bad), default=None)),
        "replica_promoted_ms": ms(t_promoted),
        "last_503_ms": ms(last_bad) if bad else None,
        "first_success_on_failed_over_slots_ms": ms(min(back, default=None)),
        "statuses_after_kill": {str(k): sum(1 for e in after if e[4] == k) for k in sorted({e[4] for e in after})},
        "non_200_for_users_of_other_masters": sum(1 for e in bad if e[1] not in doomed),
        "acknowledged": len(acked),
        "acknowledged_lost": lost,
    }


async def raw_members(store, user: str) -> set[str]:
    await store._topology()
    got = await store._client(store._master(user)).zrange(store.key(user), 0, -1)
    return set(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=8.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cluster_load.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seqrec-cluster-bench-"))
    procs: list[subprocess.Popen] = []
    cluster = ClusterProcs(work / "cluster")
    try:
        bundle = args.bundle or small_bundle(work)
        items = json.loads((bundle / "item_ids.json").read_text())
        port = free_port()
        exe = shutil.which("redis-server")
        assert exe and cluster.available, "redis-server and redis-cli are needed"
        procs.append(subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no"], cwd=work))
        wait_port(port)
        cluster.start()
        single = f"redis://127.0.0.1:{port}/0"
        setups = {
            "single": (single, {}),
            "cluster": (cluster.url, {}),
            "cluster_wait1": (cluster.url, {"SEQREC_REDIS_WAIT_REPLICAS": "1", "SEQREC_REDIS_WAIT_TIMEOUT_MS": "200"}),
        }
        runs: dict[str, list[dict]] = {k: [] for k in setups}
        for rnd in range(args.rounds):
            for name, (url, env) in setups.items():
                api = Api(bundle, url, work, SEQREC_KEY_PREFIX=f"b{rnd}{name}:", **env)
                try:
                    asyncio.run(write_load(api.port, items, 2, 1.0, "warm"))
                    w, _ = asyncio.run(write_load(api.port, items, args.conns, args.seconds, f"r{rnd}"))
                    run = {"events": w}
                    run["store_append"] = asyncio.run(
                        store_load(url, env, items, args.conns, args.seconds / 2, f"{rnd}{name}")
                    )
                    if name != "cluster_wait1":  # WAIT changes writes only
                        readers = [f"reader{i}" for i in range(400)]
                        asyncio.run(seed(api.port, readers, items))
                        run["recommend"] = asyncio.run(read_load(api.port, readers, args.conns, args.seconds))
                    runs[name].append(run)
                    print(name, rnd, json.dumps(run), flush=True)
                finally:
                    api.stop()
        api = Api(bundle, cluster.url, work, SEQREC_KEY_PREFIX="fo:")
        try:
            timeline = asyncio.run(failover(cluster, api.port, items, "fo:"))
        finally:
            api.stop()
        print("failover", json.dumps(timeline), flush=True)

        def med(name: str, phase: str, key: str) -> float:
            return round(statistics.median(r[phase][key] for r in runs[name]), 1)

        result = {
            "date": time.strftime("%Y-%m-%d"),
            "command": "flock /tmp/seqrec-cpu.lock python -m benchmarks.serving.cluster_load "
            + f"--seconds {args.seconds:g} --rounds {args.rounds} --conns {args.conns}",
            "machine": machine_info(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "setup": {
                "api": "one uvicorn process, 1 worker, per store",
                "single": "redis-server, no persistence",
                "cluster": "3 masters + 3 replicas (redis-server --cluster-enabled yes), no persistence, "
                f"cluster-node-timeout {cluster.node_timeout_ms} ms",
                "wait": "SEQREC_REDIS_WAIT_REPLICAS=1, SEQREC_REDIS_WAIT_TIMEOUT_MS=200",
                "bundle": str(bundle.name),
                "events_batch": f"{BATCH} events for {USERS_PER_BATCH} users",
                "recommend": f"k=10, users with a {HISTORY}-event history",
                "connections": args.conns,
                "seconds_per_phase": args.seconds,
            },
            "median": {
                "events_per_s": {k: med(k, "events", "items_per_s") for k in setups},
                "events_batch_p50_ms": {k: med(k, "events", "p50_ms") for k in setups},
                "events_batch_p99_ms": {k: med(k, "events", "p99_ms") for k in setups},
                "store_append_events_per_s": {k: med(k, "store_append", "items_per_s") for k in setups},
                "store_append_batch_p50_ms": {k: med(k, "store_append", "p50_ms") for k in setups},
                "recommend_per_s": {k: med(k, "recommend", "per_s") for k in ("single", "cluster")},
                "recommend_p50_ms": {k: med(k, "recommend", "p50_ms") for k in ("single", "cluster")},
            },
            "runs": runs,
            "failover": timeline,
        }
        m = result["median"]
        result["ratios"] = {
            "cluster_over_single_events": round(m["events_per_s"]["cluster"] / m["events_per_s"]["single"], 3),
            "cluster_over_single_recommend": round(m["recommend_per_s"]["cluster"] / m["recommend_per_s"]["single"], 3),
            "wait1_over_cluster_events": round(m["events_per_s"]["cluster_wait1"] / m["events_per_s"]["cluster"], 3),
            "cluster_over_single_store_append": round(
                m["store_append_events_per_s"]["cluster"] / m["store_append_events_per_s"]["single"], 3
            ),
            "wait1_over_cluster_store_append": round(
                m["store_append_events_per_s"]["cluster_wait1"] / m["store_append_events_per_s"]["cluster"], 3
            ),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({"median": m, "ratios": result["ratios"], "failover": timeline}, indent=2))
    finally:
        cluster.stop()
        for p in procs:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
