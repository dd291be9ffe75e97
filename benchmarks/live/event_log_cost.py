"""What the event log costs: POST /events throughput and Redis CPU with the log on and off, and its
memory per million events.

    flock /tmp/seqrec-cpu1.lock taskset -c 1 python -m benchmarks.live.event_log_cost [--bundle DIR]

1. Memory (one private redis-server, no persistence): the same `--users` x `--per-user` events,
   in time order across users and written in batches of 500 through the store's script (window
   SEQREC_MAX_HISTORY = 200), once with the log off and once on, each on an emptied server;
   `INFO memory` used_memory before and after each. The log's memory is the difference of the
   two; the streams (`MEMORY USAGE ... SAMPLES 0`) and the replay index (the `lx:` keys) are also
   measured apart. Twice: with RedisStore itself (one stream), and with a Redis Cluster's key
   layout (ClusterStore's key names, a stream per hash slot) written to the one server, which is
   what the masters of a cluster hold between them. The same runs give the store-level events/s
   and Redis CPU per event (INFO cpu).
2. POST /events (one private redis-server; `--aof` runs it with the compose config, appendfsync
   always): two `seqrec serve --workers 1` processes, identical but for SEQREC_EVENT_LOG, each
   with its own key prefix. In `--rounds` ABBA rounds, each posts `--api-users` fresh users x
   `--api-events` events (batches of 500 over 4 connections); events/s per round, the server's
   and Redis's CPU per event. The log-off server must leave no log behind (checked).

Without `--bundle`, a tiny SASRec is trained on the synthetic test data (the model does not take
part in ingestion). Results: benchmarks/results/live/event_log_cost.json, with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.serving.serve_load import post_events, tree_cpu  # noqa: E402
from tests.support.procs import API_KEY, REDIS_CONF, RedisProc, free_port, port_open, stop_process, wait_for  # noqa: E402

WINDOW = 200


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def events_in_time_order(users: int, per_user: int) -> list[Any]:
    """Live-like traffic: every user active throughout, one event each in turn, 60 s apart per user."""
    from app.stores import Event

    return [
        Event(f"user-{u}", str((u * 7919 + n * 104729) % 50_000), 1_700_000_000.0 + n * 60 + u * 1e-3, f"e{u}-{n}")
        for n in range(per_user)
        for u in range(users)
    ]


async def ingest(url: str, events: list[Any], log: bool, prefix: str, layout: str) -> dict[str, float]:
    """The events through the store's script in batches of 500, with the keys of `layout`: `single`
    (RedisStore itself), or `cluster` (ClusterStore's key names: `{user}` tags and a log stream per
    hash slot, written by the same script to this one Redis, so the memory of that layout is measured)."""
    from app.stores import RedisStore
    from app.stores.eventlog import default_log

    event_log = default_log() if log else None
    store = RedisStore(url, WINDOW, 30 * 86400, prefix=prefix, write_timeout=30, event_log=event_log)
    t = time.perf_counter()
    acked = 0
    for i in range(0, len(events), 500):
        batch = events[i : i + 500]
        if layout == "single":
            r = await store.append(batch)
            acked += r.accepted + r.too_old
        else:
            acked += await cluster_layout_append(store, batch, event_log)
    dt = time.perf_counter() - t
    await store.close()
    assert acked == len(events), (acked, len(events))
    return {"seconds": round(dt, 2), "events_per_s": round(len(events) / dt)}


async def cluster_layout_append(store: Any, batch: list[Any], event_log: Any) -> int:
    """ClusterStore.append's script calls, with its key names, on the single Redis `store` talks to."""
    from app.stores.base import member
    from app.stores.cluster import ClusterStore
    from app.stores.eventlog import INDEX
    from app.stores.redis import APPEND_LUA, append_args, append_call

    names = ClusterStore("redis+cluster://127.0.0.1:1", WINDOW, store.ttl_s, prefix=store.prefix)  # never connects
    by_user: dict[str, dict[str, float]] = {}
    for ev in batch:
        by_user.setdefault(ev.user_id, {}).setdefault(member(ev), ev.timestamp)
    pipe = store.redis.pipeline(transaction=False)
    now = time.time()
    for user, mapping in by_user.items():
        args = append_args(WINDOW, store.ttl_s, mapping)
        index = names.user_key(INDEX, user)
        away = names.excluded_key(user)
        keys, argv = append_call(names.key(user), away, args, event_log, names.log_key(user), index, user, now)
        pipe.eval(APPEND_LUA, len(keys), *keys, *argv)
    res = await pipe.execute()
    await names.close()
    return sum(int(r[0]) + int(r[2]) for r in res)


def memory_run(users: int, per_user: int, layout: str) -> dict[str, Any]:
    import redis

    events = events_in_time_order(users, per_user)
    out: dict[str, Any] = {"users": users, "events_per_user": per_user, "events": len(events), "window": WINDOW}
    with workdir() as work, RedisProc(work / "redis") as srv:
        client = redis.Redis.from_url(srv.url)
        for side in ("off", "on"):
            client.flushall()
            used0, cpu0 = client.info("memory")["used_memory"], redis_cpu(client)
            speed = asyncio.run(ingest(srv.url, events, side == "on", "mem:", layout))
            used1, cpu1 = client.info("memory")["used_memory"], redis_cpu(client)
            run: dict[str, Any] = {
                **speed,
                "used_memory_bytes": used1 - used0,
                "redis_cpu_us_per_event": round((cpu1 - cpu0) / len(events) * 1e6, 2),
            }
            if side == "on":
                streams = ["mem:log"] if layout == "single" else list(client.scan_iter(match="mem:log:*", count=1000))
                index = list(client.scan_iter(match="mem:lx:*", count=1000))
                run["streams"] = len(streams)
                run["stream_entries"] = sum(client.xlen(k) for k in streams)
                run["stream_bytes"] = sum(client.memory_usage(k, samples=0) or 0 for k in streams)
                run["index_keys"] = len(index)
                run["index_bytes"] = sum(client.memory_usage(k, samples=0) or 0 for k in index)
            out[side] = run
            print(layout, side, run, flush=True)
        client.close()
    per_m = 1e6 / len(events)
    log_bytes = out["on"]["used_memory_bytes"] - out["off"]["used_memory_bytes"]
    out["log_mb_per_million_events"] = round(log_bytes * per_m / 2**20, 1)
    out["stream_mb_per_million_events"] = round(out["on"]["stream_bytes"] * per_m / 2**20, 1)
    out["index_mb_per_million_events"] = round(out["on"]["index_bytes"] * per_m / 2**20, 1)
    out["store_events_per_s_ratio_on_off"] = round(out["on"]["events_per_s"] / out["off"]["events_per_s"], 3)
    return out


def tiny_bundle(work: Path) -> Path:
    from tests.support.data import synthetic_seqdata
    from training.export import export_bundle
    from training.train import train

    run = work / "run"
    model = {"max_len": 30, "dim": 16, "num_layers": 1}
    train("sasrec", synthetic_seqdata(), run, model_overrides=model, train_overrides={"epochs": 1}, progress=False)
    return export_bundle(run / "best.pt", work / "bundles", name="tiny-sasrec")


@contextlib.contextmanager
def server(bundle: Path, redis_url: str, log: bool, prefix: str, logdir: Path, tree: Path) -> Iterator[Any]:
    """`seqrec serve --workers 1` run from `tree` (its own code, not this checkout's), ready to take events."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "SEQREC_KEY_PREFIX": prefix,
        "SEQREC_EVENT_LOG": str(log).lower(),
        "SEQREC_ACCESS_LOG": "false",
    }
    cmd = [sys.executable, "-m", "training.cli", "serve", "--bundle", str(bundle), "--port", str(port)]
    cmd += ["--workers", "1", "--redis-url", redis_url, "--api-key", API_KEY]
    out = logdir / f"api-{'on' if log else 'off'}.log"
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is None and port_open(port), 120, f"the API on {port} (log: {out})")
        yield argparse.Namespace(proc=proc, port=port, log=out)
    finally:
        stop_process(proc)


def api_run(bundle: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import redis

    items = json.loads((bundle / "item_ids.json").read_text())
    conf = REDIS_CONF if args.aof else None
    with RedisProc(work / "redis", conf=conf) as srv, contextlib.ExitStack() as stack:
        client = redis.Redis.from_url(srv.url)
        apis = {
            side: stack.enter_context(server(bundle, srv.url, side == "on", f"{side}:", work, args.tree))
            for side in ("on", "off")
        }
        rounds: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        order = [side for k in range(args.rounds) for side in (("on", "off") if k % 2 == 0 else ("off", "on"))]
        for k, side in enumerate(order):
            users = [f"r{k}-{side}-u{i}" for i in range(args.api_users)]
            pid = apis[side].proc.pid
            cpu0, rcpu0 = tree_cpu(pid), redis_cpu(client)
            res = asyncio.run(post_events(apis[side].port, users, items, args.api_events, 4, API_KEY))
            n = res["events"]
            res["server_cpu_us_per_event"] = round((tree_cpu(pid) - cpu0) / n * 1e6, 2)
            res["redis_cpu_us_per_event"] = round((redis_cpu(client) - rcpu0) / n * 1e6, 2)
            if res["errors"]:
                raise SystemExit(f"{res['errors']} batches refused: see {apis[side].log}")
            rounds[side].append(res)
            print(side, res, flush=True)
        if client.exists("off:log") or not client.exists("on:log"):
            raise SystemExit(
                "the served process ignores SEQREC_EVENT_LOG: app/stores/open.py must pass event_log to the store"
            )
        logged = client.xlen("on:log")
        client.close()
    med = {side: statistics.median(r["events_per_s"] for r in rs) for side, rs in rounds.items()}
    cpu = {side: statistics.median(r["server_cpu_us_per_event"] for r in rs) for side, rs in rounds.items()}
    rcpu = {side: statistics.median(r["redis_cpu_us_per_event"] for r in rs) for side, rs in rounds.items()}
    return {
        "redis": "compose config (AOF, appendfsync always)" if args.aof else "no persistence",
        "users_per_round": args.api_users,
        "events_per_user": args.api_events,
        "logged_by_the_on_server": logged,
        "events_per_s_median": med,
        "events_per_s_ratio_on_off": round(med["on"] / med["off"], 3),
        "server_cpu_us_per_event_median": cpu,
        "redis_cpu_us_per_event_median": rcpu,
        "rounds": rounds,
    }


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="seqrec-evlog-") as d:
        yield Path(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a bundle to serve (default: a tiny SASRec trained here)")
    ap.add_argument("--users", type=int, default=2000, help="memory run: users")
    ap.add_argument("--per-user", type=int, default=500, help="memory run: events per user (window 200)")
    ap.add_argument("--rounds", type=int, default=4, help="POST /events: rounds per side (ABBA order)")
    ap.add_argument("--api-users", type=int, default=250, help="POST /events: fresh users per round")
    ap.add_argument("--api-events", type=int, default=400, help="POST /events: events per user per round")
    ap.add_argument("--aof", action="store_true", help="POST /events: Redis with the compose config (AOF always)")
    ap.add_argument("--skip-api", action="store_true", help="only the memory run")
    ap.add_argument("--skip-memory", action="store_true", help="only the POST /events run")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the source tree the API servers run from")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "event_log_cost.json")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "benchmark": "event_log_cost",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.live.event_log_cost", *sys.argv[1:]]),
        "machine": machine_info(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    if not args.skip_memory:
        result["memory"] = {layout: memory_run(args.users, args.per_user, layout) for layout in ("single", "cluster")}
    if not args.skip_api:
        with workdir() as work:
            bundle = args.bundle or tiny_bundle(work)
            result["post_events"] = api_run(bundle, args, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("memory", "post_events")}, indent=1))
    for layout, mem in result.get("memory", {}).items():
        print("memory", layout, {k: v for k, v in mem.items() if not isinstance(v, dict)})
    if "post_events" in result:
        print("post_events:", {k: v for k, v in result["post_events"].items() if k != "rounds"})


if __name__ == "__main__":
    main()
