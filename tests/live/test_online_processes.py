"""Online attribution through real processes: 2 workers of `python -m app.runtime.server` on one
port, and 2 API replicas on one Redis and key prefix, with requests routed at random.

Each simulated user asks for a list, sends the next event at once, asks again, and so on (several
events per user, many users at a time), each request on a new connection (the kernel hands it to
either worker) or to a randomly chosen replica. The client counts what the service should: per
variant, the lists it saw and the next events it sent, and which of those events were hits. The
service must score at least 99.9% of those events, against the right lists (the same hits), and
keep per-user totals of the experiment that add up to the same counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import API_KEY, ROOT, ApiProc, RedisProc, free_port, wait_for

KEY = {"X-API-Key": API_KEY}
EXPERIMENT = "control=tiny-a:50,treatment=tiny-b:50"
USERS, EVENTS_PER_USER, CONCURRENT = 100, 11, 12


def env(bundles: list[Path], redis: RedisProc, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SEQREC_BUNDLES": ",".join(str(b) for b in bundles),
        "SEQREC_REDIS_URL": redis.url,
        "SEQREC_KEY_PREFIX": prefix,
        "SEQREC_API_KEY": API_KEY,
        "SEQREC_ACCESS_LOG": "false",
        "SEQREC_EXPERIMENT": EXPERIMENT,
    }


def server(bundles: list[Path], redis: RedisProc, prefix: str, workers: int, log: Path) -> ApiProc:
    port = free_port()
    cmd = [sys.executable, "-m", "app.runtime.server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--graceful-s", "5"]
    return ApiProc.custom(cmd, env(bundles, redis, prefix), log, port)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProc]:
    r = RedisProc(tmp_path / "redis").start()
    yield r
    r.kill()


async def drive(ports: list[int], new_connections: bool, items: list[str], seed: int = 0) -> dict[str, Any]:
    """The traffic; returns the client's own count per variant: lists followed by an event, hits, users."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_keepalive_connections=0) if new_connections else httpx.Limits()
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=30, limits=limits) for p in ports]
    count: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(CONCURRENT)

    async def user(n: int) -> None:
        async with gate:
            uid, ts = f"user-{seed}-{n}", 1_700_000_000.0
            for _ in range(EVENTS_PER_USER):
                r = await rng.choice(clients).get(f"/recommend/{uid}", params={"k": 10})
                assert r.status_code == 200, r.text
                body = r.json()
                served = [x["item_id"] for x in body["items"]]
                nxt = rng.choice(served) if served and rng.random() < 0.5 else rng.choice(items)
                ts += 60
                ev = {"user_id": uid, "item_id": nxt, "timestamp": ts}
                r = await rng.choice(clients).post("/events", json={"events": [ev]}, headers=KEY)
                assert r.status_code == 200, r.text
                c = count.setdefault(body["variant"], {"events": 0, "hits": 0, "users": set()})
                c["events"] += 1
                c["hits"] += nxt in served
                c["users"].add(uid)

    try:
        await asyncio.gather(*(user(n) for n in range(USERS)))
    finally:
        for c in clients:
            await c.aclose()
    return {v: {**c, "users": len(c["users"])} for v, c in count.items()}


def catalogue(bundle: Path) -> list[str]:
    return json.loads((bundle / "item_ids.json").read_text())


def settled_stats(port: int, expected: int) -> dict[str, Any]:
    """GET /stats/online once every event has been looked up and flushed (or after 20 s)."""
    stats: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = httpx.get(f"http://127.0.0.1:{port}/stats/online", params={"minutes": 30}, timeout=10).json()
        done = sum(r["scored"] for r in stats["variants"]) + stats["unserved_events"]
        if done >= expected:
            time.sleep(1.5)  # one more flush: nothing else may arrive
            return httpx.get(f"http://127.0.0.1:{port}/stats/online", params={"minutes": 30}, timeout=10).json()
        time.sleep(0.5)
    return stats


def check(client: dict[str, Any], stats: dict[str, Any]) -> None:
    rows = {r["variant"]: r for r in stats["variants"]}
    assert set(rows) == set(client) == {"control", "treatment"}, (rows, client)
    sent = sum(c["events"] for c in client.values())
    assert sent == USERS * EVENTS_PER_USER
    scored = sum(r["scored"] for r in rows.values())
    print(
        f"client {client}; server {[(v, r['scored'], r['hits']) for v, r in rows.items()]}; unserved "
        f"{stats['unserved_events']}"
    )
    assert scored >= 0.999 * sent, (scored, sent, stats["unserved_events"])
    for v, c in client.items():
        assert rows[v]["served"] == c["events"]
        assert c["events"] - 1 <= rows[v]["scored"] <= c["events"], (v, rows[v], c)
        assert abs(rows[v]["hits"] - c["hits"]) <= c["events"] - rows[v]["scored"], (v, rows[v], c)  # the right lists
        assert rows[v]["users"] == c["users"]
    # The experiment's per-user totals (written by both processes) add up to the same counts.
    test = stats["experiment_test"]
    assert test["experiment"] == EXPERIMENT
    arms = {a["variant"]: a for a in test["variants"]}
    for v, c in client.items():
        assert arms[v]["users"] == arms[v]["users_served"] == c["users"]
        assert arms[v]["served"] == c["events"] and arms[v]["scored"] == rows[v]["scored"]
        assert arms[v]["hit_rate"] == pytest.approx(rows[v]["hit_rate"])
        lo, hi = arms[v]["hit_rate_ci95"]
        assert lo < arms[v]["hit_rate"] < hi
    (cmp,) = test["comparisons"]
    assert cmp["variant"] == "treatment" and cmp["against"] == "control"
    assert cmp["verdict"] == "no difference yet"  # identical bundles, and fewer users than min_users


def test_two_workers_random_routing_scores_every_next_event(
    aa_bundles: list[Path], redis: RedisProc, tmp_path: Path
) -> None:
    api = server(aa_bundles, redis, "w2:", 2, tmp_path / "workers.log").start(timeout=120)
    try:
        wait_for(lambda: redis.client().zcount("w2:workers", time.time() - 10, "+inf") >= 2, 60, "both workers")
        client = asyncio.run(drive([api.port], True, catalogue(aa_bundles[0]), seed=1))
        check(client, settled_stats(api.port, USERS * EVENTS_PER_USER))
    finally:
        api.stop()
    assert "Traceback" not in (tmp_path / "workers.log").read_text()


def test_two_replicas_random_routing_scores_every_next_event(
    aa_bundles: list[Path], redis: RedisProc, tmp_path: Path
) -> None:
    apis = [server(aa_bundles, redis, "r2:", 1, tmp_path / f"replica{i}.log").spawn() for i in range(2)]
    try:
        for a in apis:
            wait_for(a.ready, 120, f"replica on {a.port}", interval=0.2)
        client = asyncio.run(drive([a.port for a in apis], False, catalogue(aa_bundles[0]), seed=2))
        check(client, settled_stats(apis[1].port, USERS * EVENTS_PER_USER))
    finally:
        for a in apis:
            a.stop()
