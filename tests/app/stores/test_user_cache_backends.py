"""The user-state entry next to the history, on a real Redis and a real Redis Cluster: one script
call reads both (times too), batched SET .. EX writes land in the history's slot, and an entry of
the wrong type is a miss, never a failed history read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.crc import key_slot

from app.serving.usercache import UserCache
from app.stores import ClusterStore, Event, RedisStore
from app.stores.usercache import RedisBackend

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[RedisStore | ClusterStore]:
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        s: RedisStore | ClusterStore = ClusterStore(url, max_history=50, ttl_s=60, prefix=key_prefix, read_timeout=1)
    else:
        s = RedisStore(
            request.getfixturevalue("redis_url"), max_history=50, ttl_s=60, prefix=key_prefix, read_timeout=1
        )
    yield s
    await s.close()


async def test_history_and_entry_in_one_call_and_batched_writes(store: RedisStore | ClusterStore) -> None:
    cache = UserCache(store, True, 30, CollectorRegistry())
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    users = [f"bk{u}" for u in range(20)]
    await store.append([Event(u, f"i{n}", 100.0 + n, f"e{n}") for u in users for n in range(3)])
    for u in users:
        got = await backend.read(u, 10, "b")
        assert got.history == ["i0", "i1", "i2"] and got.times is None and got.entry is None
    for u in users:  # one event-loop turn: one flush, one pipeline per master
        backend.put(u, "b", f"blob-{u}".encode())
    assert len(backend._flushing) == 1
    await cache.drain()
    for u in users:
        got = await backend.read(u, 2, "b", with_times=True)
        assert got.history == ["i1", "i2"] and got.times == [101.0, 102.0] and got.entry == f"blob-{u}".encode()
        if isinstance(store, ClusterStore):  # in the history's slot: one master holds both
            assert key_slot(backend.key(u, "b").encode()) == key_slot(store.key(u).encode())
    client = await backend._client(users[0])
    assert 0 < await client.ttl(backend.key(users[0], "b")) <= 30


async def test_entry_of_the_wrong_type_is_a_miss(store: RedisStore | ClusterStore) -> None:
    cache = UserCache(store, True, 30, CollectorRegistry())
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    await store.append([Event("wt", "i0", 1.0, "e0")])
    client: Redis = await backend._client("wt")
    await client.hset(backend.key("wt", "b"), "x", "y")
    got = await backend.read("wt", 10, "b")
    assert got.history == ["i0"] and got.entry is None
    await client.script_flush()  # a Redis that lost its scripts (restart): EVAL again
    assert (await backend.read("wt", 10, "b")).history == ["i0"]
