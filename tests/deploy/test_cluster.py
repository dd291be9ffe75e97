"""Redis Cluster as the event store, on real processes (tests/redis_cluster.py: 3 masters + 3 replicas).

- the users' keys spread over every master, and one user's keys share one slot;
- a batch that spans masters is written per master, and a partial failure is told, never acknowledged;
- failover: kill -9 of a master under write load: its users' writes answer 503 + Retry-After
  until its replica is promoted, then succeed again without an API restart; with WAIT on, no
  acknowledged event is lost (without it, the loss is measured and printed);
- items posted to one API process reach another across the cluster (sharded pub/sub).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.cluster import ClusterNode as SyncNode
from redis.cluster import RedisCluster as SyncCluster

from app.stores import ClusterStore, Event, PartialAppend, StoreUnavailable
from app.stores.cluster import startup_nodes, tag, user_of_tag
from tests.app.serving.test_items import unisrec_bundle  # noqa: F401  (a tiny UniSRec: takes new items by text)
from tests.redis_cluster import CLUSTER_CONF
from tests.support.cluster import ClusterProcs
from tests.support.procs import API_KEY, wait_for

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sync_client(c: ClusterProcs) -> SyncCluster:
    return SyncCluster(startup_nodes=[SyncNode("127.0.0.1", p) for p in c.ports], decode_responses=True)


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ClusterProcs]:
    """A cluster of its own for a test that kills nodes (the session one stays intact)."""
    c = ClusterProcs(tmp_path / "cluster", conf=CLUSTER_CONF)
    if not c.available:
        pytest.skip("redis-server / redis-cli are not installed: the Redis Cluster tests need both")
    c.start()
    yield c
    c.stop()


def test_url_forms() -> None:
    nodes, opts = startup_nodes("redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)] and opts == {"password": "s@cret"}
    assert startup_nodes("redis://h")[0] == [("h", 6379)]
    with pytest.raises(ValueError, match="database 0"):
        startup_nodes("redis+cluster://h:1/3")
    with pytest.raises(ValueError, match=r"'\{'"):
        ClusterStore("redis+cluster://h:1", 5, 60, prefix="a{b}:")


@pytest.mark.parametrize("user", ["alice", "}x", "a}b", "{y}", "50%}", "%7D", "ü s:er|1"])
def test_a_users_keys_share_one_slot(redis_cluster: ClusterProcs, user: str) -> None:
    """Every key of one user has the same slot (as Redis itself computes it), and the tag is reversible."""
    store = ClusterStore(redis_cluster.url, 5, 60)
    keys = [store.key(user), store.user_key("s", user), store.user_key("anything", user)]
    r = redis.Redis(port=redis_cluster.ports[0], decode_responses=True)
    slots = {r.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
    r.close()
    assert len(slots) == 1, (keys, slots)
    assert user_of_tag(tag(user)) == user and store.user_of_key(store.key(user)) == user


@pytest.mark.anyio
async def test_ten_thousand_users_spread_over_every_master(redis_cluster: ClusterProcs) -> None:
    prefix = "spread:"
    store = ClusterStore(redis_cluster.url, max_history=50, ttl_s=600, prefix=prefix, read_timeout=2.0)
    users = [f"user-{i}" for i in range(10_000)]
    try:
        for start in range(0, len(users), 1000):
            batch = [Event(u, f"i{j}", 1_700_000_000 + j, f"e{j}") for u in users[start : start + 1000] for j in (0, 1)]
            r = await store.append(batch)
            assert (r.accepted, r.duplicates, r.too_old) == (2000, 0, 0)
        for u in users[::997]:
            assert await store.history(u) == ["i0", "i1"]
    finally:
        await store.close()
    per_master: Counter[int] = Counter()
    for port in redis_cluster.master_ports():
        r = redis.Redis(port=port, decode_responses=True)
        per_master[port] = sum(1 for _ in r.scan_iter(match=f"{prefix}h:*", count=1000))
        r.close()
    assert len(per_master) == 3 and sum(per_master.values()) == 10_000
    # CRC16 over 16384 slots, ~5461 slots per master: each holds about a third.
    assert all(2800 < n < 3900 for n in per_master.values()), per_master


@pytest.mark.anyio
async def test_partial_failure_is_told_not_acknowledged(fresh_cluster: ClusterProcs) -> None:
    """One master down: the batch's users on the other masters are stored, the rest are reported."""
    store = ClusterStore(fresh_cluster.url, max_history=50, ttl_s=600, prefix="part:", read_timeout=0.5)
    try:
        users = [f"u{i}" for i in range(60)]
        await store.append([Event(u, "warm", 1.0, "w") for u in users])  # loads the slot map
        victim = fresh_cluster.master_ports()[0]
        on_victim = {u for u in users if store._master(u).endswith(f":{victim}")}
        assert 0 < len(on_victim) < len(users)
        fresh_cluster.kill(victim)
        with pytest.raises(PartialAppend) as err:
            await store.append([Event(u, "x", 2.0, "e2") for u in users])
        p = err.value
        assert set(p.failed_users) == on_victim and p.failed_events == len(on_victim)
        assert p.stored.accepted == len(users) - len(on_victim) == p.stored_events
        for u in users:
            if u not in on_victim:
                assert await store.history(u) == ["warm", "x"]
        with pytest.raises(StoreUnavailable) as whole:  # only the dead master's users: nothing stored
            await store.append([Event(u, "y", 3.0, "e3") for u in on_victim])
        assert not isinstance(whole.value, PartialAppend)
        assert await store.ping()  # the other masters answer: still ready
    finally:
        await store.close()


def _writer(base: str, users: list[str], stop: threading.Event, log: list[tuple], name: str) -> None:
    """One event per request, users in turn; logs (t, user, event_id, item, status, retry-after)."""
    n = 0
    with httpx.Client(timeout=5.0) as http:
        while not stop.is_set():
            user = users[n % len(users)]
            ev = {"user_id": user, "item_id": f"i{n % 7}", "event_id": f"{name}-{n}", "timestamp": 1_700_000_000 + n}
            try:
                r = http.post(f"{base}/events", json={"events": [ev]}, headers=KEY)
                status, retry = r.status_code, r.headers.get("retry-after")
                if status == 200:
                    assert r.json()["accepted"] == 1, r.text
            except httpx.HTTPError:
                status, retry = -1, None
            log.append((time.monotonic(), user, ev["event_id"], ev["item_id"], status, retry))
            n += 1


@pytest.mark.parametrize("wait", [0, 1], ids=["async-replication", "wait-1-replica"])
def test_master_killed_under_write_load(
    fresh_cluster: ClusterProcs, api_factory, deploy_bundle: Path, wait: int
) -> None:
    c = fresh_cluster
    prefix = f"failover{wait}:"
    env = {"SEQREC_KEY_PREFIX": prefix, "SEQREC_REDIS_WAIT_REPLICAS": str(wait), "SEQREC_REDIS_WAIT_TIMEOUT_MS": "1000"}
    api = api_factory([deploy_bundle], c.url, **env)
    pid = api.proc.pid
    probe = ClusterStore(c.url, 5, 60, prefix=prefix)
    victim = c.master_ports()[0]
    cl = sync_client(c)
    node_of = {u: cl.get_node_from_key(probe.key(u)).port for u in (f"user{i}" for i in range(90))}
    cl.close()
    users = list(node_of)
    doomed = {u for u, port in node_of.items() if port == victim}
    assert doomed and len(doomed) < len(users)

    log: list[tuple] = []
    stop = threading.Event()
    writers = [threading.Thread(target=_writer, args=(api.base, users, stop, log, f"w{i}")) for i in range(3)]
    for t in writers:
        t.start()
    try:
        wait_for(lambda: sum(e[4] == 200 for e in log) >= 150, 60, "acknowledged writes before the kill")
        t_kill = time.monotonic()
        c.kill(victim)
        wait_for(lambda: len(c.master_ports()) == 3, 30, "a replica promoted")
        t_promoted = time.monotonic()
        if wait:
            # The promoted replica has no replica of its own: WAIT 1 cannot be met until the killed
            # node rejoins (as its replica). Until then its users' writes stay unacknowledged (503).
            time.sleep(1.0)
            c.restart(victim)
            c.wait_healthy()

        def doomed_ok_after_promotion() -> bool:
            return any(e[0] > t_promoted and e[1] in doomed and e[4] == 200 for e in log)

        wait_for(doomed_ok_after_promotion, 30, "writes to the failed-over slots succeeding again")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in writers:
            t.join(timeout=30)
    assert api.proc.poll() is None and api.proc.pid == pid  # no API restart

    after = [e for e in log if e[0] >= t_kill]
    bad = [e for e in after if e[4] != 200]
    assert bad, "the kill was never noticed"
    assert all(e[4] == 503 and e[5] == "1" for e in bad), Counter((e[4], e[5]) for e in bad)
    # The other masters' users never noticed anything ... (with WAIT, a replica that answers late on a
    # loaded 2-core machine may time out a write: a 503 like the others, never a false acknowledgement)
    others = Counter(e[4] for e in after if e[1] not in doomed)
    if wait:
        assert others[503] <= 0.01 * sum(others.values()) and set(others) <= {200, 503}, others
    else:
        assert set(others) == {200}, others
    first_503 = min(e[0] for e in bad) - t_kill
    # First acknowledged write to the failed-over slots after the promotion. (Not "after the last 503":
    # with WAIT on, a write can still time out while the rejoined replica syncs, after the first success.)
    recovered = min(e[0] for e in after if e[1] in doomed and e[4] == 200 and e[0] > t_promoted) - t_kill
    # ... and every acknowledged event is readable after the failover (checked with WAIT; measured without).
    acked = [e for e in log if e[4] == 200]
    cl = sync_client(c)
    pipe = cl.pipeline()
    for e in acked:
        pipe.zscore(probe.key(e[1]), f"{e[2]}\x1f{e[3]}")
    scores = pipe.execute()
    lost = sum(s is None for s in scores)
    cl.close()
    asyncio.run(probe.close())
    print(
        f"\nWAIT {wait}: first 503 {first_503 * 1000:.0f} ms after kill -9,"
        f" promoted {1000 * (t_promoted - t_kill):.0f} ms,"
        f" writes to its slots ok again {recovered * 1000:.0f} ms; {len(acked)} acknowledged, {lost} lost"
    )
    if wait:
        assert lost == 0, f"{lost} of {len(acked)} acknowledged events lost with WAIT 1"


def test_items_reach_another_process_across_the_cluster(
    redis_cluster: ClusterProcs,
    api_factory,
    unisrec_bundle: Path,  # noqa: F811
) -> None:
    """POST /items on A -> SPUBLISH in the registry's slot -> B recommends it; C started later catches up."""
    from tests.app.serving.test_items import _texts

    prefix = "items-cluster:"
    a, b = (api_factory([unisrec_bundle], redis_cluster.url, SEQREC_KEY_PREFIX=prefix).base for _ in range(2))
    assert httpx.get(f"{a}/readyz").json()["store"] == "redis-cluster"
    ev = [{"user_id": "cl", "item_id": "1", "timestamp": 1_600_000_000}]
    assert httpx.post(f"{a}/events", json={"events": ev}, headers=KEY).status_code == 200
    twin = httpx.get(f"{b}/recommend/cl", params={"k": 1}).json()["items"][0]["item_id"]
    item = {"item_id": "cold-cl", "title": _texts(unisrec_bundle)[twin], "categories": []}
    assert httpx.post(f"{a}/items", json={"items": [item]}, headers=KEY).status_code == 200
    t0 = time.monotonic()
    wait_for(lambda: "cold-cl" in recommended(b, "cl"), 5, "process B recommending the item posted to A")
    print(f"\nitem posted to A recommended by B after {(time.monotonic() - t0) * 1000:.0f} ms (cluster)")
    cl = sync_client(redis_cluster)
    assert cl.hexists(f"{prefix}{{items}}", "cold-cl")  # the registry's one slot
    cl.close()
    c = api_factory([unisrec_bundle], redis_cluster.url, SEQREC_KEY_PREFIX=prefix).base
    assert "cold-cl" in recommended(c, "cl")


def recommended(base: str, user: str) -> set[str]:
    return {x["item_id"] for x in httpx.get(f"{base}/recommend/{user}", params={"k": 2}).json()["items"]}


def test_compose_cluster_profile() -> None:
    """Six nodes on the cluster config and fixed addresses, a one-shot join, and an API naming every node."""
    from tests.deploy.test_compose import load_compose

    c = load_compose()
    services = c["services"]
    nodes = {n: s for n, s in services.items() if n.startswith("redis-node-")}
    assert len(nodes) == 6 and all(s["profiles"] == ["cluster"] for s in nodes.values())
    for name, s in nodes.items():
        assert f"{name}:/data" in s["volumes"] and name in c["volumes"]
        assert "./docker/redis-cluster.conf:/usr/local/etc/redis/redis.conf:ro" in s["volumes"]
    addrs = {s["networks"]["cluster"]["ipv4_address"] for s in nodes.values()}
    init = services["redis-cluster-init"]
    assert set(init["depends_on"]) == set(nodes) and "--cluster-replicas 1" in init["command"][0]
    assert all(f"{a}:6379" in init["command"][0] for a in addrs)
    api = services["api-cluster"]
    assert api["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
    url = api["environment"]["SEQREC_REDIS_URL"]
    assert url.startswith("redis+cluster://") and all(n in url for n in nodes)
    assert "cluster" in api["networks"] and "SEQREC_API_KEY" not in api["environment"]
    conf = (Path(__file__).resolve().parents[2] / "docker" / "redis-cluster.conf").read_text()
    for line in ("cluster-enabled yes", "cluster-require-full-coverage no", "appendfsync always"):
        assert f"\n{line}\n" in conf, line


def test_local_topology_on_a_cluster(deploy_bundle: Path, tmp_path: Path) -> None:
    """scripts/local_topology.py --cluster: six cluster nodes and two APIs sharing them, serving a
    published bundle (the training job has its own topology test, tests/deploy/test_topology.py)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "scripts/local_topology.py", "--cluster", "--no-retrain", "--bundle", str(deploy_bundle)]
    cmd += ["--workdir", str(tmp_path / "topology")]
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Redis Cluster" in r.stdout
    checks = {c["check"]: c["ok"] for c in json.loads(r.stdout[r.stdout.rindex("\n{") :])["checks"]}
    assert checks["API 2 sees API 1's events"] and all(checks.values()), checks
    for log in (tmp_path / "topology").glob("api*.log"):
        text = log.read_text()
        assert "Traceback" not in text


def test_announcements_survive_a_failover_of_their_master(
    fresh_cluster: ClusterProcs,
    api_factory,
    unisrec_bundle: Path,  # noqa: F811
) -> None:
    """kill -9 of the master owning the registry's slot: once its replica is promoted, an item
    posted to A reaches B again (B resubscribes to the new owner and catches up)."""
    from tests.app.serving.test_items import _texts

    prefix = "items-fo:"
    cl = sync_client(fresh_cluster)
    owner = cl.get_node_from_key(f"{prefix}{{items}}:new").port
    cl.close()
    a, b = (api_factory([unisrec_bundle], fresh_cluster.url, SEQREC_KEY_PREFIX=prefix).base for _ in range(2))
    fresh_cluster.kill(owner)
    wait_for(lambda: len(fresh_cluster.master_ports()) == 3, 30, "a replica promoted")
    ev = [{"user_id": "fo", "item_id": "1", "timestamp": 1_600_000_000}]
    wait_for(lambda: httpx.post(f"{a}/events", json={"events": ev}, headers=KEY).status_code == 200, 20, "events")
    # B reads the history from the promoted replica (not a popularity fallback) before the twin is taken.
    wait_for(lambda: httpx.get(f"{b}/recommend/fo").json()["source"] == "model", 20, "B reading the history")
    twin = httpx.get(f"{b}/recommend/fo", params={"k": 1}).json()["items"][0]["item_id"]
    item = {"item_id": "cold-fo", "title": _texts(unisrec_bundle)[twin], "categories": []}
    wait_for(
        lambda: httpx.post(f"{a}/items", json={"items": [item]}, headers=KEY).status_code == 200,
        20,
        "POST /items accepted after the failover",
    )
    wait_for(lambda: "cold-fo" in recommended(b, "fo"), 15, "B recommending the item posted to A after the failover")


@pytest.mark.anyio
async def test_histories_move_from_one_redis_to_the_cluster_and_back(
    redis_cluster: ClusterProcs, tmp_path: Path
) -> None:
    """app/stores/migrate.py: one Redis -> cluster -> another Redis, every history intact; twice is a no-op."""
    from app.stores import RedisStore
    from app.stores.migrate import migrate
    from tests.support.procs import RedisProc

    prefix = "mig:"
    one, other = RedisProc(tmp_path / "one").start(), RedisProc(tmp_path / "other").start()
    src = RedisStore(one.url, 50, 600, prefix=prefix)
    users = [f"m{i}" for i in range(300)] + ["}odd", "a}b{c", "50%"]
    want = {u: [f"i{(hash(u) + t) % 40}" for t in range(1 + len(u) % 7)] for u in users}
    try:
        await src.append(
            [Event(u, it, 1_700_000_000 + t, f"e{t}") for u, its in want.items() for t, it in enumerate(its)]
        )
        n = sum(len(v) for v in want.values())
        assert await migrate(one.url, redis_cluster.url, prefix, 50, 600) == {"users": 303, "events": n, "accepted": n}
        again = await migrate(one.url, redis_cluster.url, prefix, 50, 600)
        assert again["accepted"] == 0 and again["events"] == n  # idempotent: ids and times kept
        # Reading back checks the copy, not the read timeout: as long as a loaded machine needs.
        cl = ClusterStore(redis_cluster.url, 50, 600, prefix=prefix, read_timeout=10.0)
        assert {u: await cl.history(u) for u in users} == want
        await cl.close()
        assert (await migrate(redis_cluster.url, other.url, prefix, 50, 600))["accepted"] == n
        back = RedisStore(other.url, 50, 600, prefix=prefix, read_timeout=10.0)
        assert {u: await back.history(u) for u in users} == want
        await back.close()
    finally:
        await src.close()
        one.kill()
        other.kill()


def test_post_events_with_a_master_down_tells_how_much_is_not_stored(
    fresh_cluster: ClusterProcs, deploy_bundle: Path
) -> None:
    """The API's answer to a partial write: 503 + Retry-After, the count of events not stored, no address."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(bundles=[deploy_bundle], redis_url=fresh_cluster.url, api_key=API_KEY, access_log=False)
    with TestClient(create_app(settings)) as client:
        store = client.app.state.seqrec.store
        users = [f"p{i}" for i in range(30)]
        ev = [{"user_id": u, "item_id": "1", "event_id": "a", "timestamp": 1_700_000_000} for u in users]
        assert client.post("/events", json={"events": ev}, headers=KEY).json()["accepted"] == 30
        victim = fresh_cluster.master_ports()[0]
        doomed = [u for u in users if store._master(u).endswith(f":{victim}")]
        fresh_cluster.kill(victim)
        ev2 = [{**e, "event_id": "b"} for e in ev]
        r = client.post("/events", json={"events": ev2}, headers=KEY)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        detail = r.json()["detail"]
        assert f"{len(doomed)} of 30 events ({len(doomed)} users) are not stored" in detail, detail
        assert str(victim) not in r.text and "127.0.0.1" not in r.text
        assert client.get("/readyz").status_code == 200  # the other masters answer
        wait_for(lambda: len(fresh_cluster.master_ports()) == 3, 30, "a replica promoted")
        wait_for(lambda: client.post("/events", json={"events": ev2}, headers=KEY).status_code == 200, 20, "resend")
        # The resend stored exactly what was missing: the rest counted as duplicates.
        r = client.post("/events", json={"events": ev2}, headers=KEY)
        assert (r.json()["accepted"], r.json()["duplicates"]) == (0, 30)
        got = asyncio.run(_histories(fresh_cluster.url, users))
        assert all(h == ["1", "1"] for h in got.values()), got


async def _histories(url: str, users: list[str]) -> dict[str, list[str]]:
    s = ClusterStore(url, 50, 600, read_timeout=10.0)  # what is stored, however slow the machine
    try:
        return {u: await s.history(u) for u in users}
    finally:
        await s.close()


@pytest.mark.anyio
async def test_unreachable_cluster_is_store_unavailable() -> None:
    from tests.support.procs import free_port

    s = ClusterStore(f"redis+cluster://127.0.0.1:{free_port()}", 5, 60, read_timeout=0.2)
    t = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        await s.append([Event("u", "a", 1.0, "e")])
    with pytest.raises(StoreUnavailable):
        await s.history("u")
    assert not await s.ping()
    assert time.perf_counter() - t < 3  # refused at once, nothing hangs
    await s.close()


def test_reload_reaches_every_process_on_the_cluster(
    redis_cluster: ClusterProcs, api_factory, deploy_bundles: list[Path]
) -> None:
    """POST /admin/reload on A: the stored configuration and its SPUBLISH reach B, which acknowledges."""
    prefix = "reload-cluster:"
    a, b = (api_factory(deploy_bundles, redis_cluster.url, SEQREC_KEY_PREFIX=prefix) for _ in range(2))
    body = {"bundles": [str(p) for p in deploy_bundles], "default_model": "sasrec-b"}
    r = httpx.post(f"{a.base}/admin/reload", json=body, headers=KEY, timeout=60)
    assert r.status_code == 200, r.text
    reached = r.json()["reached"]
    assert reached["complete"] and reached["live"] == 2 and len(reached["applied"]) == 2, reached
    assert httpx.get(f"{b.base}/recommend/u1", params={"k": 1}).json()["bundle"] == "sasrec-b"
