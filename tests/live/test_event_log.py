"""The event log: every acknowledged event, once, out of `seqrec snapshot`, far beyond the window.

Against the three stores (in process, a real redis-server, a real Redis Cluster of six processes),
through POST /events of a real API process on a Redis with the compose config (AOF, appendfsync
always) killed with SIGKILL midway, and through a cluster master's failover. Each user sends ten
windows of events, in shuffled batches, with late events and replays; what comes out of the
log is compared with what the service acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import redis

from app.stores import ClusterStore, Event, EventStore, MemoryStore, RedisStore, StoreUnavailable
from app.stores.eventlog import EventLog, crc_slot, slot_tag
from tests.support.procs import API_KEY, REDIS_CONF, ROOT, ApiProc, RedisProc, wait_for
from training.snapshot import SnapshotError, connect, snapshot, snapshot_log

N = 20  # the window of the store tests: ten windows are 200 events per user
Row = tuple[str, str, float, str]  # user_id, item_id, timestamp, event_id


def traffic(users: list[str], per_user: int, seed: int = 0, t0: float = 1_700_000_000.0) -> list[Event]:
    """`per_user` events per user with distinct ids, items repeating, in shuffled order (late events
    within a batch and across batches)."""
    rng = random.Random(seed)
    events = [
        Event(u, f"i{rng.randrange(40)}", t0 + n + rng.random() / 2, f"{u}-e{n}")
        for u in users
        for n in range(per_user)
    ]
    rng.shuffle(events)
    return events


def batches(events: list[Event], size: int) -> list[list[Event]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def row(ev: Event) -> Row:
    return (ev.user_id, ev.item_id, ev.timestamp, ev.event_id)


def rows(df: pl.DataFrame) -> list[Row]:
    return list(df.select("user_id", "item_id", "timestamp", "event_id").iter_rows())


async def logged(store: EventStore) -> list[Row]:
    return [row(e.event) async for e in store.log_entries()]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    prefix = f"evlog-{uuid.uuid4().hex[:8]}:"
    if request.param == "memory":
        s: EventStore = MemoryStore(max_history=N, ttl_s=3600)
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        s = ClusterStore(url, max_history=N, ttl_s=3600, prefix=prefix, read_timeout=2.0)
    else:
        url = request.getfixturevalue("redis_proc").url
        s = RedisStore(url, max_history=N, ttl_s=3600, prefix=prefix, read_timeout=2.0)
    yield s
    await s.close()


# ------------------------------------------------------------------------------------ the contract
@pytest.mark.anyio
async def test_every_acknowledged_event_is_logged_once(store: EventStore) -> None:
    users = [f"user-{k}" for k in range(6)] + ["ü s:er|1", "a}b%7D{c"]
    events = traffic(users, 10 * N)
    acked = 0
    for b in batches(events, 37):
        r = await store.append(b)
        assert r.duplicates == 0
        acked += r.accepted + r.too_old
    assert acked == len(events)
    out = await logged(store)
    assert sorted(out) == sorted(map(row, events)), "each acknowledged event exactly once"
    # The window still holds only the newest N of each user.
    for u in users:
        newest = sorted((e for e in events if e.user_id == u), key=lambda e: e.timestamp)[-N:]
        assert await store.history(u) == [e.item_id for e in newest]

    # Replays, whole and in other batches: the window's counts as before, nothing logged again.
    replay = events[:]
    random.Random(1).shuffle(replay)
    for b in batches(replay, 53):
        r = await store.append(b)
        assert r.accepted == 0 and r.duplicates + r.too_old == len(b)
    assert await logged(store) == out


@pytest.mark.anyio
async def test_late_event_beyond_the_window_is_logged_once(store: EventStore) -> None:
    await store.append([Event("u", f"i{t}", 100.0 + t, f"e{t}") for t in range(2 * N)])
    late = Event("u", "late", 1.0, "late-1")  # older than everything the window keeps
    first = await store.append([late])
    assert (first.accepted, first.too_old) == (0, 1)  # the window cannot keep it ...
    assert row(late) in await logged(store)  # ... the log does
    again = await store.append([late, late])
    assert (again.accepted, again.duplicates, again.too_old) == (0, 1, 1)
    assert [r for r in await logged(store) if r[3] == "late-1"] == [row(late)]


@pytest.mark.anyio
async def test_replay_after_the_window_expired_is_not_logged_again() -> None:
    now = [0.0]
    store = MemoryStore(max_history=N, ttl_s=60, clock=lambda: now[0])
    events = [Event("u", f"i{t}", 100.0 + t, f"e{t}") for t in range(5)]
    await store.append(events)
    now[0] = 61.0  # the user's window expires; the log keeps its events
    assert await store.history("u") == []
    r = await store.append(events)
    assert r.accepted == 5  # new to the (expired) window, as its contract says ...
    assert len(await logged(store)) == 5  # ... but known to the log


@pytest.mark.anyio
async def test_replay_after_the_window_expired_redis(redis_proc: RedisProc) -> None:
    """The same on Redis: the window's TTL ends, the index of logged events remembers them."""
    store = RedisStore(redis_proc.url, max_history=N, ttl_s=1, prefix="exp:", read_timeout=2.0)
    events = [Event("u", f"i{t}", 100.0 + t, f"e{t}") for t in range(5)]
    await store.append(events)
    wait_for(lambda: not redis_proc.client().exists("exp:h:u"), 5, "the window to expire")
    r = await store.append(events)
    assert r.accepted == 5
    assert len(await logged(store)) == 5
    await store.close()


@pytest.mark.anyio
async def test_the_three_stores_log_the_same_events(redis_proc: RedisProc, redis_cluster: Any) -> None:
    prefix = f"same-{uuid.uuid4().hex[:8]}:"
    stores: list[EventStore] = [
        MemoryStore(max_history=N, ttl_s=3600),
        RedisStore(redis_proc.url, max_history=N, ttl_s=3600, prefix=prefix, read_timeout=2.0),
        ClusterStore(redis_cluster.url, max_history=N, ttl_s=3600, prefix=prefix, read_timeout=2.0),
    ]
    events = traffic([f"u{k}" for k in range(10)], 3 * N, seed=7)
    results = []
    for s in stores:
        counts = []
        for b in batches(events + events[::3], 41):  # replays in the same and later batches
            r = await s.append(b)
            counts.append((r.accepted, r.duplicates, r.too_old))
        results.append((counts, sorted(await logged(s))))
        await s.close()
    assert results[0] == results[1] == results[2]


@pytest.mark.anyio
async def test_log_off_writes_only_the_window(redis_proc: RedisProc) -> None:
    store = RedisStore(redis_proc.url, max_history=N, ttl_s=3600, prefix="off:", event_log=None)
    r = await store.append(traffic(["u"], 3 * N))
    assert (r.accepted, r.too_old) == (N, 2 * N)
    assert await logged(store) == []
    assert sorted(k.decode() for k in redis.Redis.from_url(redis_proc.url).keys("off:*")) == ["off:h:u"]
    await store.close()
    memory = MemoryStore(max_history=N, ttl_s=3600, event_log=None)
    await memory.append(traffic(["u"], 3 * N))
    assert await logged(memory) == []


def test_cluster_log_streams_share_their_users_slot() -> None:
    """A stream per hash slot, named so that it lies in the slot it logs (a script's keys must)."""
    assert all(crc_slot(slot_tag(s)) == s for s in range(16384))
    store = ClusterStore("redis+cluster://127.0.0.1:1", 5, 60, prefix="p:")
    from redis.crc import key_slot

    for user in ["u1", "ü s:er|1", "a}b%7D{c", "{x}"]:
        assert key_slot(store.log_key(user).encode()) == key_slot(store.key(user).encode())
        assert key_slot(store.user_key("lx", user).encode() + b":123") == key_slot(store.key(user).encode())


@pytest.mark.anyio
async def test_retention_trims_the_log(redis_proc: RedisProc, tmp_path: Path) -> None:
    """MINID ~ drops whole stream nodes (100 entries) once every entry is older than the retention; a
    range export that reaches into what was trimmed says so."""
    store = RedisStore(redis_proc.url, max_history=N, ttl_s=3600, prefix="ret:", event_log=EventLog(retention_s=1))
    users = [f"u{k}" for k in range(10)]
    await store.append(traffic(users, 30))  # 300 entries: three full nodes
    client = redis.Redis.from_url(redis_proc.url)
    assert client.xlen("ret:log") == 300
    time.sleep(1.2)
    await store.append([Event("u-new", "i", 1.0, "e")])
    assert client.xlen("ret:log") <= 101
    res = snapshot_log(connect(redis_proc.url), tmp_path / "r.parquet", prefix="ret:", since=0)
    assert any("trimmed" in w for w in res.warnings)
    assert ("u-new", "i", 1.0, "e") in rows(pl.read_parquet(tmp_path / "r.parquet"))
    await store.close()


# ---------------------------------------------------------------------- exports: ranges, checkpoints
async def _phases(store: EventStore, users: list[str]) -> tuple[list[list[Event]], list[float]]:
    """Three phases of traffic with a gap between them; the cut times fall in the gaps."""
    phases, cuts = [], []
    for k in range(3):
        if k:
            await asyncio.sleep(0.05)
            cuts.append(time.time())
            await asyncio.sleep(0.05)
        now = time.time()
        events = [Event(u, f"i{n % 7}", now + n * 1e-3, f"p{k}-{u}-{n}") for u in users for n in range(2 * N)]
        if k == 2:
            events.append(Event(users[0], "late", 5.0, "late-in-phase-2"))  # arrives now, dated long ago
        for b in batches(events, 30):
            await store.append(b)
        phases.append(events)
    return phases, cuts


@pytest.mark.anyio
@pytest.mark.parametrize("flavour", ["redis", "cluster"])
async def test_a_time_range_is_the_full_export_filtered(
    flavour: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    prefix = f"range-{uuid.uuid4().hex[:8]}:"
    if flavour == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        s: EventStore = ClusterStore(url, max_history=N, ttl_s=3600, prefix=prefix, read_timeout=2.0)
    else:
        url = request.getfixturevalue("redis_proc").url
        s = RedisStore(url, max_history=N, ttl_s=3600, prefix=prefix)
    phases, (t1, t2) = await _phases(s, [f"u{k}" for k in range(12)])
    await s.close()
    client = connect(url)
    full = snapshot_log(client, tmp_path / "full.parquet", prefix=prefix)
    mid = snapshot_log(client, tmp_path / "mid.parquet", prefix=prefix, since=t1, until=t2)
    assert full.events == sum(map(len, phases)) and mid.events == len(phases[1])
    df_full, df_mid = pl.read_parquet(tmp_path / "full.parquet"), pl.read_parquet(tmp_path / "mid.parquet")
    # Phases 0 and 1 carry their arrival as their event time: filtering the full export by time gives
    # the range's export, row for row and in the same order.
    assert rows(df_mid) == rows(df_full.filter((pl.col("timestamp") >= t1) & (pl.col("timestamp") < t2)))
    # Consecutive ranges partition the log, the late event (dated long ago) in the range it arrived in.
    parts = [
        snapshot_log(client, tmp_path / f"{k}.parquet", prefix=prefix, since=a, until=b)
        for k, (a, b) in enumerate([(None, t1), (t1, t2), (t2, None)])
    ]
    got = [rows(pl.read_parquet(p.path)) for p in parts]
    assert [sorted(g) for g in got] == [sorted(map(row, ph)) for ph in phases]
    assert sorted(r for g in got for r in g) == sorted(rows(df_full))


@pytest.mark.anyio
async def test_checkpoint_continues_where_the_last_export_ended(redis_cluster: Any, tmp_path: Path) -> None:
    prefix = f"ckpt-{uuid.uuid4().hex[:8]}:"
    store = ClusterStore(redis_cluster.url, max_history=N, ttl_s=3600, prefix=prefix, read_timeout=2.0)
    users = [f"u{k}" for k in range(30)]
    first, second = traffic(users, 5 * N, seed=1), traffic(users, 5 * N, seed=2, t0=1_800_000_000.0)
    second = [Event(e.user_id, e.item_id, e.timestamp, "b-" + e.event_id) for e in second]
    ckpt = tmp_path / "log.ckpt"
    client = connect(redis_cluster.url)
    for b in batches(first, 100):
        await store.append(b)
    a = snapshot_log(client, tmp_path / "a.parquet", prefix=prefix, checkpoint=ckpt)
    assert sorted(rows(pl.read_parquet(a.path))) == sorted(map(row, first))
    assert len(json.loads(ckpt.read_text())["streams"]) == a.streams > 1

    late = [Event(u, "late", 1.0, f"late-{u}") for u in users]  # far older than every window
    for b in batches(second + late + first[:500], 100):  # new events, late ones and replays
        await store.append(b)
    # A run that fails midway writes nothing and leaves the checkpoint as it was.
    before = ckpt.read_text()
    with pytest.raises(SnapshotError):
        snapshot_log(_FailsAfter(client, 3), tmp_path / "b.parquet", prefix=prefix, checkpoint=ckpt, count=50)
    assert ckpt.read_text() == before and not (tmp_path / "b.parquet").exists()
    b = snapshot_log(client, tmp_path / "b.parquet", prefix=prefix, checkpoint=ckpt)
    assert sorted(rows(pl.read_parquet(b.path))) == sorted(map(row, second + late))
    c = snapshot_log(client, tmp_path / "c.parquet", prefix=prefix, checkpoint=ckpt)
    assert c.events == 0  # nothing new
    with pytest.raises(SnapshotError, match="another checkpoint file"):
        snapshot_log(client, tmp_path / "d.parquet", prefix="other:", checkpoint=ckpt)
    await store.close()


class _FailsAfter:
    """A cluster client whose nodes' XRANGE fails after `n` calls: Redis lost midway."""

    def __init__(self, client: Any, n: int) -> None:
        self.client, self.left = client, n

    def get_primaries(self) -> Any:
        return self.client.get_primaries()

    def get_redis_connection(self, node: Any) -> Any:
        conn, outer = self.client.get_redis_connection(node), self

        class Node:
            def __getattr__(self, name: str) -> Any:
                return getattr(conn, name)

            def xrange(self, *args: Any, **kw: Any) -> Any:
                outer.left -= 1
                if outer.left < 0:
                    raise redis.ConnectionError("Connection closed by server.")
                return conn.xrange(*args, **kw)

        return Node()

    def scan_iter(self, *args: Any, **kw: Any) -> Any:
        return self.client.scan_iter(*args, **kw)


# ------------------------------------------------------------- real processes: the API, a restart
def _post(base: str, batch: list[Event]) -> httpx.Response:
    body = {
        "events": [
            {"user_id": e.user_id, "item_id": e.item_id, "timestamp": e.timestamp, "event_id": e.event_id}
            for e in batch
        ]
    }
    return httpx.post(f"{base}/events", json=body, headers={"X-API-Key": API_KEY}, timeout=30)


def test_post_events_ten_windows_through_a_redis_restart(aa_bundles: list[Path], tmp_path: Path) -> None:
    """POST /events on a Redis with the compose config (AOF, appendfsync always), killed with SIGKILL
    midway: every acknowledged event of 10 x SEQREC_MAX_HISTORY per user is in `seqrec snapshot`'s
    export of the log, once, also after every batch was sent again."""
    redis_srv = RedisProc(tmp_path / "redis", conf=REDIS_CONF).start()
    prefix = "live:"
    users = [f"user-{k}" for k in range(5)] + ["ユーザー✓"]
    events = traffic(users, 10 * 200, seed=3)  # SEQREC_MAX_HISTORY's default: 200
    sent = batches(events, 500)
    acked: list[Event] = []
    try:
        with ApiProc([aa_bundles[0]], redis_srv.url, tmp_path, SEQREC_KEY_PREFIX=prefix) as api:
            for k, b in enumerate(sent):
                if k == len(sent) // 2:
                    redis_srv.kill()  # SIGKILL: what was acknowledged must be on disk already
                    assert _post(api.base, b).status_code == 503  # not acknowledged
                    redis_srv.start()
                    wait_for(lambda: httpx.get(f"{api.base}/readyz", timeout=5).status_code == 200, 30, "ready")
                r = _post(api.base, b)
                assert r.status_code == 200, r.text
                out = r.json()
                assert out["duplicates"] == 0 and out["accepted"] + out["too_old"] == len(b)
                acked += b
            for b in sent:  # every batch again: replays
                out = _post(api.base, b).json()
                assert out["accepted"] == 0 and out["duplicates"] + out["too_old"] == len(b)
        export = tmp_path / "events.parquet"
        cmd = [sys.executable, "-m", "training.cli", "snapshot", "--redis-url", redis_srv.url, "--prefix", prefix]
        proc = subprocess.run([*cmd, "--out", str(export)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1])["events"] == len(acked)
        assert sorted(rows(pl.read_parquet(export))) == sorted(map(row, acked))
        # The window export holds only each user's last 200.
        window = snapshot(connect(redis_srv.url), tmp_path / "window.parquet", prefix=prefix)
        assert (window.users, window.events) == (len(users), 200 * len(users))
    finally:
        redis_srv.kill()


@pytest.mark.anyio
async def test_cluster_ten_windows_through_a_master_failover(redis_cluster: Any, tmp_path: Path) -> None:
    """On the cluster, writes acknowledged by a master and one replica (SEQREC_REDIS_WAIT_REPLICAS=1);
    a master killed with SIGKILL midway, its replica promoted: every acknowledged event is exported
    from the log once, replays included."""
    prefix = f"clog-{uuid.uuid4().hex[:8]}:"
    store = ClusterStore(
        redis_cluster.url,
        max_history=N,
        ttl_s=3600,
        prefix=prefix,
        read_timeout=2.0,
        wait_replicas=1,
        wait_timeout_ms=2000,
    )
    users = [f"user-{k}" for k in range(40)]
    events = traffic(users, 10 * N, seed=4)
    sent = batches(events, 400)
    acked: list[Event] = []
    killed = redis_cluster.master_ports()[0]
    try:
        for k, b in enumerate(sent):
            if k == len(sent) // 2:
                redis_cluster.kill(killed)
                wait_for(lambda: killed not in redis_cluster.master_ports(), 30, "the failover")
                redis_cluster.restart(killed)  # back as the promoted master's replica, so WAIT 1 can succeed
                redis_cluster.wait_healthy(60)
            for _ in range(150):  # a batch refused during the failover is sent again, as a client does
                try:
                    r = await store.append(b)
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.2)
            else:
                pytest.fail("the cluster did not take writes again after the failover")
            assert r.accepted + r.too_old + r.duplicates == len(b)
            acked += b
        for b in sent:
            r = await store.append(b)
            assert r.accepted == 0
    finally:
        if killed not in redis_cluster.alive():
            redis_cluster.restart(killed)
        redis_cluster.wait_healthy(60)
        await store.close()
    res = snapshot_log(connect(redis_cluster.url), tmp_path / "c.parquet", prefix=prefix)
    assert sorted(rows(pl.read_parquet(res.path))) == sorted(map(row, acked))


def test_the_settings_reach_the_store() -> None:
    # SEQREC_EVENT_LOG=false keeps the window only; the retention is the setting's, on every flavour.
    from app.settings import Settings
    from app.stores.open import open_store

    off = open_store(Settings(bundles=[Path("b")], event_log=False))
    assert off.event_log is None  # type: ignore[attr-defined]
    for url in ("redis://127.0.0.1:1/0", None):
        on = open_store(Settings(bundles=[Path("b")], redis_url=url, event_log_retention_s=3600))
        assert on.event_log is not None and on.event_log.retention_s == 3600  # type: ignore[attr-defined]
