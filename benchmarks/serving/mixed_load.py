"""Mixed workload against the compose topology run locally: 2 API processes sharing one Redis.

    python -m benchmarks.serving.mixed_load --bundle artifacts/bench-sasrec-ml1m --seconds 30 --conns 16
    (or: python scripts/local_topology.py --bench 30, which trains the bundle with the train job first)

Topology (tests/support/topology.py, shared with scripts/local_topology.py): redis-server with
docker/redis.conf (AOF, appendfsync always), two API processes started by the serving image's
entrypoint (docker/serve-entrypoint.sh) with the rate limits of docker/api.env.example. Load
(closed loop, every connection on its own keep-alive socket, connections split evenly over the
two APIs):
- 80% GET /recommend/{user}?k=10 for users with a 50-event history (written first);
- 20% POST /events, batches of 20 new events (unique event ids) for writer-owned users.
Reported: requests/s, p50/p90/p99 per kind and overall, errors (any non-200: must be zero),
how many recommendations fell back to popularity, and a check that every acknowledged event
is in Redis afterwards. The load generator runs on the same 2 cores as the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serving.serve_load import Conn  # noqa: E402
from tests.support.procs import RedisNotInstalled  # noqa: E402
from tests.support.topology import Topology  # noqa: E402

READ_SHARE = 0.8
BATCH = 20
PREFIX = "seqrec:"  # the service's default key prefix


async def prepopulate(port: int, key: str, users: list[str], items: list[str], history: int) -> int:
    rng = random.Random(0)
    c = await Conn.open(port)
    n = 0
    batch: list[dict] = []
    for u in users:
        for t, it in enumerate(rng.choices(items, k=history)):
            batch.append({"user_id": u, "item_id": it, "timestamp": 1_700_000_000 + t, "event_id": f"p{t}"})
            if len(batch) == 500:
                status, _ = await c.request("POST", "/events", json.dumps({"events": batch}).encode(), key)
                assert status == 200, status
                n += len(batch)
                batch = []
    if batch:
        status, _ = await c.request("POST", "/events", json.dumps({"events": batch}).encode(), key)
        assert status == 200, status
        n += len(batch)
    c.close()
    return n


async def mixed(ports: list[int], key: str, users: list[str], items: list[str], conns: int, seconds: float) -> dict:
    lat: dict[str, list[float]] = {"recommend": [], "events": []}
    errors: dict[str, int] = {}
    sources: dict[str, int] = {}
    acked: list[tuple[str, str, str]] = []  # (user, event id, item) of every acknowledged event
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        rng = random.Random(1000 + w)
        c = await Conn.open(ports[w % len(ports)])
        batches = 0
        while time.perf_counter() < stop:
            if rng.random() < READ_SHARE:
                kind = "recommend"
                t = time.perf_counter()
                status, body = await c.request("GET", f"/recommend/{rng.choice(users)}?k=10")
                dt = time.perf_counter() - t
                if status == 200:
                    src = json.loads(body)
                    tag = src["source"] + (f":{src['fallback']}" if src.get("fallback") else "")
                    sources[tag] = sources.get(tag, 0) + 1
            else:
                kind = "events"
                batches += 1
                user = f"mw{w}-{batches // 5}"  # 100 events per user: below max_history, nothing trimmed
                evs = [
                    {"user_id": user, "item_id": rng.choice(items), "event_id": f"b{batches}-{j}"} for j in range(BATCH)
                ]
                t = time.perf_counter()
                status, body = await c.request("POST", "/events", json.dumps({"events": evs}).encode(), key)
                dt = time.perf_counter() - t
                if status == 200:
                    acked.extend((e["user_id"], e["event_id"], e["item_id"]) for e in evs)
            lat[kind].append(dt)
            if status != 200:
                errors[f"{kind}:{status}"] = errors.get(f"{kind}:{status}", 0) + 1
        c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conns)))
    wall = time.perf_counter() - t0

    def summary(values: list[float]) -> dict:
        ms = np.array(values) * 1e3
        return {
            "requests": len(values),
            "per_s": round(len(values) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2),
        }

    return {
        "seconds": round(wall, 2),
        "connections": conns,
        "overall": summary(lat["recommend"] + lat["events"]),
        "recommend": summary(lat["recommend"]),
        "events": {**summary(lat["events"]), "events_per_s": round(len(lat["events"]) * BATCH / wall, 1)},
        "errors": errors,
        "error_count": sum(errors.values()),
        "recommend_sources": sources,
        "acked": acked,
    }


def verify_acked(redis_url: str, acked: list[tuple[str, str, str]]) -> int:
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    missing = 0
    for i in range(0, len(acked), 5000):
        pipe = r.pipeline(transaction=False)
        for user, eid, item in acked[i : i + 5000]:
            pipe.zscore(f"{PREFIX}h:{user}", f"{eid}\x1f{item}")
        missing += sum(s is None for s in pipe.execute())
    r.close()
    return missing


def run_and_report(topo: Topology, seconds: float, out: Path, command: str, conns: int = 16, users: int = 2000) -> dict:
    """Drive a started Topology and write out.json / out.md."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    bundle = (topo.bundle_root / "sasrec").resolve()
    items = json.loads((bundle / "item_ids.json").read_text())
    key = f"X-API-Key: {topo.api_key}\r\n"
    read_users = [f"mr{i}" for i in range(users)]
    pre = asyncio.run(prepopulate(topo.api_ports[0], key, read_users, items, 50))
    asyncio.run(mixed(topo.api_ports, key, read_users, items, 4, 3))  # warm-up (not reported)
    res = asyncio.run(mixed(topo.api_ports, key, read_users, items, conns, seconds))
    acked = res.pop("acked")
    res["acknowledged_events"] = len(acked)
    res["acknowledged_events_missing_in_redis"] = verify_acked(topo.redis_url, acked)
    manifest = json.loads((bundle / "manifest.json").read_text())
    result = {
        "command": command,
        "machine": machine_info(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "topology": {
            "api_processes": topo.n_api,
            "uvicorn_workers_per_api": topo.workers_per_api,
            "redis": "redis-server with docker/redis.conf (appendonly yes, appendfsync always, noeviction)",
            "rate_limit": {k: v for k, v in topo.api_env.items() if k.startswith("SEQREC_WRITE")},
        },
        "bundle": {"name": manifest.get("name"), "model": manifest.get("model"), "num_items": len(items)},
        "workload": {
            "recommend_share": READ_SHARE,
            "event_batch": BATCH,
            "read_users": users,
            "history_per_read_user": 50,
            "prepopulated_events": pre,
        },
        **res,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    o, r, e = res["overall"], res["recommend"], res["events"]
    md = [
        "# Mixed load: 80% recommend, 20% event batches, two API processes sharing one Redis\n",
        f"Command: `{command}`\n",
        f"Machine: {result['machine']}; load average at the end {result['load_average_at_end']} "
        "(shared 2-core machine, load generator included).\n",
        f"Topology: {topo.n_api} API processes x {topo.workers_per_api} uvicorn worker(s), started by "
        "docker/serve-entrypoint.sh; redis-server with docker/redis.conf (AOF, appendfsync always); "
        f"write rate limit {result['topology']['rate_limit']}; bundle `{manifest.get('name')}` "
        f"({len(items)} items); {conns} closed-loop connections for {res['seconds']} s.\n",
        "| requests | kind | req/s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        f"| {o['requests']} | all | {o['per_s']} | {o['p50_ms']} | {o['p90_ms']} | {o['p99_ms']} | {o['max_ms']} |",
        f"| {r['requests']} | GET /recommend (k=10) | {r['per_s']} | {r['p50_ms']} | {r['p90_ms']} "
        f"| {r['p99_ms']} | {r['max_ms']} |",
        f"| {e['requests']} | POST /events ({BATCH}/batch, {e['events_per_s']} events/s) | {e['per_s']} "
        f"| {e['p50_ms']} | {e['p90_ms']} | {e['p99_ms']} | {e['max_ms']} |",
        "",
        f"Errors (non-200): **{res['error_count']}** {res['errors'] or ''}",
        f"Recommendation sources: {res['recommend_sources']}",
        f"Acknowledged events: {res['acknowledged_events']}, missing in Redis afterwards: "
        f"**{res['acknowledged_events_missing_in_redis']}**",
    ]
    if any(k.endswith("store_unavailable") for k in res["recommend_sources"]):
        md.append(
            "\n`popularity:store_unavailable`: the Redis read took longer than `SEQREC_REDIS_TIMEOUT_S` (0.25 s) "
            "under CPU contention, so the API answered 200 from popularity, flagged, instead of waiting."
        )
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="An exported bundle directory (e.g. SASRec on ML-1M).")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--workers-per-api", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serving/mixed_load")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="seqrec-mixed-"))
    topo = Topology(workdir, workers_per_api=args.workers_per_api)
    try:
        topo.bundle_root.mkdir(parents=True)
        (topo.bundle_root / "sasrec").symlink_to(args.bundle.resolve())
        try:
            topo.start_redis()
        except RedisNotInstalled as exc:
            sys.exit(str(exc))
        topo.write_api_env()
        topo.start_apis()
        res = run_and_report(topo, args.seconds, args.out, " ".join(["python", *sys.argv]), args.conns, args.users)
    finally:
        topo.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if res["error_count"] or res["acknowledged_events_missing_in_redis"]:
        sys.exit("errors or lost events: see the results file")


if __name__ == "__main__":
    main()
