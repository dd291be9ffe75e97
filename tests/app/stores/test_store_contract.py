"""One contract, three stores: the in-process store, Redis (a real, private redis-server) and a
Redis Cluster (six real redis-server processes, tests/redis_cluster.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from app.stores import ClusterStore, Event, EventStore, MemoryStore, RedisStore, StoreUnavailable

N = 5
pytestmark = pytest.mark.anyio  # anyio's pytest plugin (installed with starlette) runs the async tests


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        s: EventStore = MemoryStore(max_history=N, ttl_s=1)
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        s = ClusterStore(url, max_history=N, ttl_s=1, prefix=key_prefix, read_timeout=1.0)
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, max_history=N, ttl_s=1, prefix=key_prefix, read_timeout=1.0)
    yield s
    await s.close()


def ev(user: str, item: str, ts: float, eid: str | None = None) -> Event:
    return Event(user, item, ts, eid or f"t{ts}")


async def test_history_is_in_event_time_order(store: EventStore) -> None:
    r = await store.append([ev("u", "c", 3), ev("u", "a", 1), ev("u", "b", 2)])
    assert (r.accepted, r.duplicates) == (3, 0)
    assert await store.history("u") == ["a", "b", "c"]
    assert await store.history("nobody") == []


async def test_history_times_are_the_events_times_in_order(store: EventStore) -> None:
    await store.append([ev("u", "c", 1_700_000_030.25), ev("u", "a", 1_700_000_010), ev("u", "b", 1_700_000_020)])
    items, times = await store.history_times("u")
    assert items == ["a", "b", "c"] == await store.history("u")
    assert times == [1_700_000_010.0, 1_700_000_020.0, 1_700_000_030.25]  # sub-second times kept
    assert await store.history_times("u", 2) == (["b", "c"], [1_700_000_020.0, 1_700_000_030.25])
    assert await store.history_times("nobody") == ([], [])


async def test_late_event_lands_in_its_time_position(store: EventStore) -> None:
    await store.append([ev("u", "a", 10), ev("u", "c", 30)])
    await store.append([ev("u", "b", 20)])
    assert await store.history("u") == ["a", "b", "c"]


async def test_keeps_last_n_and_drops_events_older_than_all_kept(store: EventStore) -> None:
    await store.append([ev("u", f"i{t}", t) for t in range(10, 20)])
    assert await store.history("u") == [f"i{t}" for t in range(15, 20)]
    await store.append([ev("u", "old", 1)])  # older than everything kept: stored then trimmed
    assert await store.history("u") == [f"i{t}" for t in range(15, 20)]
    assert await store.history("u", 2) == ["i18", "i19"]


async def test_replayed_event_changes_nothing(store: EventStore) -> None:
    first = await store.append([ev("u", "a", 1, "e1"), ev("u", "b", 2, "e2")])
    again = await store.append([ev("u", "a", 99, "e1"), ev("u", "b", 2, "e2"), ev("u", "b", 2, "e2")])
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (0, 3)
    assert await store.history("u") == ["a", "b"]  # the replay with a new time did not move "a"


async def test_same_item_twice_is_two_events(store: EventStore) -> None:
    r = await store.append([ev("u", "a", 1, "e1"), ev("u", "a", 2, "e2")])
    assert r.accepted == 2
    assert await store.history("u") == ["a", "a"]


async def test_users_are_independent(store: EventStore) -> None:
    await store.append([ev("u1", "a", 1), ev("u2", "b", 1), ev("u1", "c", 2)])
    assert await store.history("u1") == ["a", "c"]
    assert await store.history("u2") == ["b"]


async def test_ids_with_spaces_unicode_and_separators(store: EventStore) -> None:
    await store.append([ev("ü s:er|1", "item:ä b|c", 1, "ev id|1")])
    assert await store.history("ü s:er|1") == ["item:ä b|c"]


async def test_idle_history_expires(store: EventStore) -> None:
    await store.append([ev("u", "a", 1)])
    assert await store.ping()
    # ttl_s=1 in this suite: gone within 1.3 s (polled: a read does not extend the TTL)
    written = time.monotonic()
    while await store.history("u") and time.monotonic() - written < 1.3:
        await asyncio.sleep(0.02)
    assert await store.history("u") == []


async def test_redis_down_raises_store_unavailable() -> None:
    from tests.support.procs import free_port

    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", max_history=N, ttl_s=60, read_timeout=0.2)
    with pytest.raises(StoreUnavailable):
        await s.append([ev("u", "a", 1)])
    with pytest.raises(StoreUnavailable):
        await s.history("u")
    assert not await s.ping()
    await s.close()


async def test_hung_redis_read_is_cut_short() -> None:
    """A Redis that accepts connections but never answers: the read fails within its short timeout."""
    import socket
    import time

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)  # the kernel completes the handshake; nobody ever replies
        port = srv.getsockname()[1]
        s = RedisStore(f"redis://127.0.0.1:{port}/0", max_history=N, ttl_s=60, read_timeout=0.2, write_timeout=5)
        t = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            await s.history("u")
        assert time.perf_counter() - t < 3  # bounded by the read timeout, far below the write timeout
        s.pool.reset()  # drop the stuck connections without a QUIT round trip
        s.raw_pool.reset()


async def test_counts_say_what_happened_under_trimming(store: EventStore) -> None:
    """accepted + duplicates + too_old = the batch; an event older than the kept window is neither
    accepted nor a duplicate, also when it is a replay of an event trimmed since."""
    r = await store.append([ev("u", f"p{t}", 100 + t, f"p{t}") for t in range(N + 1)])
    # All N + 1 were new; the oldest fell off the window in the same write.
    assert (r.accepted, r.duplicates, r.too_old) == (N, 0, 1)
    kept = await store.history("u")
    again = await store.append([ev("u", "p0", 100, "p0")])  # replay of the trimmed event
    assert (again.accepted, again.duplicates, again.too_old) == (0, 0, 1)
    assert await store.history("u") == kept
    replay = await store.append([ev("u", f"p{t}", 100 + t, f"p{t}") for t in range(N + 1)])
    assert (replay.accepted, replay.duplicates, replay.too_old) == (0, N, 1)
    mixed = await store.append(
        [ev("u", "new", 200, "n1"), ev("u", "new", 200, "n1"), ev("u", "old", 1, "o1"), ev("u", "p3", 103, "p3")]
    )
    # n1 is new (its second copy a duplicate), o1 too old, p3 already stored.
    assert (mixed.accepted, mixed.duplicates, mixed.too_old) == (1, 2, 1)
    assert await store.history("u") == ["p2", "p3", "p4", "p5", "new"]
