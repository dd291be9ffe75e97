"""Whole cached lists (app/serving/usercache.py, `state_check`): served only while the stored history is
the one they were computed from, checked inside Redis, and always equal to the full recompute."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.serving.usercache import Answer, RnnState, UserCache, pack_entry, unpack_entry, unpack_vector, vector_base
from app.settings import Settings
from app.stores import RedisStore, StoreUnavailable
from app.stores.base import Event
from app.stores.usercache import RedisBackend, state_check
from tests.support.parity import PATIENT_STORE, cache_outcomes

KEY = {"X-API-Key": "k"}
MAX = 20  # SEQREC_MAX_HISTORY of these apps: a full history is trimmed to it


@pytest.fixture
def apps(bundle_path: Path, redis_url: str, key_prefix: str) -> Iterator[tuple[TestClient, TestClient]]:
    common = {
        "bundles": [bundle_path],
        "api_key": "k",
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "max_history": MAX,
        **PATIENT_STORE,
    }
    with (
        TestClient(create_app(Settings(**common))) as on,
        TestClient(create_app(Settings(**common, user_cache=False, fast_reads=False))) as off,
    ):
        yield on, off


def _post(client: TestClient, events: list[dict]) -> None:
    r = client.post("/events", json={"events": events}, headers=KEY)
    assert r.status_code == 200, r.text


def _same(a: dict, b: dict) -> None:
    assert [x["item_id"] for x in a["items"]] == [x["item_id"] for x in b["items"]]
    np.testing.assert_allclose([x["score"] for x in a["items"]], [x["score"] for x in b["items"]], atol=1e-5)
    assert (a["source"], a["history_length"]) == (b["source"], b["history_length"])


def test_each_kind_of_write_invalidates_the_list_and_nothing_else_does(apps: tuple[TestClient, TestClient]) -> None:
    on, off = apps
    b = on.app.state.seqrec.registry.get(None)
    items = b.item_ids
    cache = on.app.state.seqrec.user_cache

    def read(params: dict | None = None) -> dict:
        got = on.get("/recommend/u", params=params or {"k": 5}).json()
        on.portal.call(cache.drain)
        _same(got, off.get("/recommend/u", params=params or {"k": 5}).json())
        return got

    def lists() -> float:
        return cache_outcomes(on).get("list", 0.0)

    _post(on, [{"user_id": "u", "item_id": items[n], "timestamp": 100 + n, "event_id": f"e{n}"} for n in range(MAX)])
    read()  # computes and stores the list
    n0 = lists()
    read()
    assert lists() == n0 + 1  # unchanged history: the stored list
    read({"k": 3})
    assert lists() == n0 + 2  # a shorter list is a prefix of the stored one

    cases = [
        # (what is written, whether the read window changes)
        ({"item_id": items[40], "timestamp": 500, "event_id": "new"}, True),  # newest event
        ({"item_id": items[41], "timestamp": 110.5, "event_id": "late"}, True),  # late, inside the window
        ({"item_id": items[42], "timestamp": 1, "event_id": "ancient"}, False),  # older than all: trimmed at once
        ({"item_id": items[40], "timestamp": 500, "event_id": "new"}, False),  # a duplicate: a no-op
    ]
    for event, changes in cases:
        _post(off, [{"user_id": "u", **event}])  # through the other app: the check is in Redis
        before = lists()
        got = read()
        assert lists() == before + (0 if changes else 1), event
        if changes:  # the recomputed list is stored: the next read is a list hit again
            read()
            assert lists() == before + 1
        assert got["history_length"] == MAX

    before = cache_outcomes(on)
    read({"k": 8})  # the stored list holds the user's top candidates (candidates_depth), more than k
    read({"k": 8})
    read({"k": 5})
    after = cache_outcomes(on)
    assert after.get("list", 0) - before.get("list", 0) == 3
    # Other shapes never come from a stored list (they need the history itself).
    before = lists()
    for params in ({"k": 5, "exclude_seen": "false"}, {"k": 5, "explain": "true"}, {"k": 5, "diversify": 0.5}):
        assert on.get("/recommend/u", params=params).status_code == 200
    assert lists() == before


def test_an_expired_history_is_never_answered_from_its_list(
    apps: tuple[TestClient, TestClient], redis_url: str, key_prefix: str
) -> None:
    on, _ = apps
    b = on.app.state.seqrec.registry.get(None)
    _post(on, [{"user_id": "gone", "item_id": i, "timestamp": 10 + n} for n, i in enumerate(b.item_ids[:5])])
    assert on.get("/recommend/gone?k=5").json()["source"] == "model"
    on.portal.call(on.app.state.seqrec.user_cache.drain)
    redis.Redis.from_url(redis_url).delete(f"{key_prefix}h:gone")  # what expiry does; the entry stays
    got = on.get("/recommend/gone?k=5").json()
    assert got["source"] == "popularity" and got["history_length"] == 0


def test_a_registered_item_turns_lists_off_for_that_bundle(bundle_path: Path) -> None:
    from app.bundles.bundle import Bundle

    cache = UserCache(RedisStore("redis://127.0.0.1:1/0", 10, 60), True, 60, CollectorRegistry())
    b = Bundle.load(bundle_path)
    assert cache.answers(b)
    b.add_items(["brand-new"], np.ones((1, b.dim), np.float32))
    assert not cache.answers(b)  # its lists would miss the new item: vectors only
    assert not UserCache(cache.store, True, 60, CollectorRegistry(), lists=False).answers(Bundle.load(bundle_path))


def test_entry_layout_round_trips_and_rejects_other_blobs() -> None:
    vec = np.arange(8, dtype=np.float32).reshape(1, 8)
    answer = Answer(np.array([5, 3, 9]), np.array([0.5, 0.25, -1.0], np.float32), 17)
    check = state_check(b"ab12", 17, b"e1\x1fi1", b"e9\x1fi9")
    blob = pack_entry(check, vector_base(b"d" * 16, vec), answer)
    got = unpack_vector(blob, 8)
    assert got is not None
    assert got[0] == b"d" * 16 and np.array_equal(got[1], vec)
    assert got[2] is not None and got[2].labels.tolist() == [5, 3, 9] and got[2].n_seen == 17
    full = unpack_entry(blob, 16 + 4 * 8)
    assert full is not None and full[0] == check
    plain = unpack_entry(pack_entry(b"", vector_base(b"d" * 16, vec), None), 16 + 4 * 8)
    assert plain is not None and plain[0] == b"" and plain[2] is None
    for other in (b"", b"x" * 48, blob[:-1], b"d" * 16 + vec.tobytes()):  # e.g. a bare (first-layout) state
        assert unpack_vector(other, 8) is None
    # Another base size (a recurrent state's) is another layout: never read as a vector.
    assert unpack_vector(pack_entry(check, b"s" * 60, answer), 8) is None
    # No check is a prefix of another once terminated: the last member "a" vs "ab".
    assert not state_check(b"t", 2, b"f", b"ab").startswith(state_check(b"t", 2, b"f", b"a"))


def test_a_recurrent_state_is_read_from_either_entry_layout() -> None:
    """A state stored alone (as entries were first written), or packed with or without a list."""
    bundle = SimpleNamespace(dim=4, manifest=SimpleNamespace(incremental=SimpleNamespace(state_shape=(1, 3))))
    st = RnnState(b"d" * 16, 7, np.arange(3, dtype=np.float32).reshape(1, 1, 3), np.ones((1, 4), np.float32))
    raw = st.to_bytes()
    answer = Answer(np.array([2, 1]), np.array([0.5, 0.1], np.float32), 7)
    for blob in (raw, pack_entry(state_check(b"t", 7, b"a", b"b"), raw, answer), pack_entry(b"", raw, None)):
        got = RnnState.parse(blob, bundle)  # type: ignore[arg-type]
        assert got is not None and (got.digest, got.n) == (b"d" * 16, 7)
        assert np.array_equal(got.state, st.state) and np.array_equal(got.vec, st.vec)
    vector_entry = pack_entry(b"", vector_base(b"d" * 16, np.ones((1, 4), np.float32)), None)
    for other in (vector_entry, raw[:-1], raw + b"x", None):
        assert RnnState.parse(other, bundle) is None  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_reads_of_one_loop_turn_share_one_round_trip(redis_url: str, key_prefix: str) -> None:
    store = RedisStore(redis_url, 50, 60, prefix=key_prefix, read_timeout=5)
    backend = UserCache(store, True, 60, CollectorRegistry()).backend
    assert isinstance(backend, RedisBackend)
    users = [f"r{u}" for u in range(30)]
    await store.append([Event(u, f"i{u}-{n}", 10.0 + n, f"e{n}") for u in users for n in range(3)])
    sent = []
    pipeline = store.raw.pipeline

    def counting(*args: object, **kw: object):
        sent.append(1)
        return pipeline(*args, **kw)

    store.raw.pipeline = counting  # type: ignore[method-assign]
    got = await asyncio.gather(*(backend.read(u, 10, "b") for u in users))
    assert [g.history for g in got] == [[f"i{u}-{n}" for n in range(3)] for u in users]
    assert len(sent) == 1
    await store.close()
    # A Redis that is down fails every read of the batch the way one read fails.
    dead = RedisStore("redis://127.0.0.1:1/0", 50, 60, prefix=key_prefix, read_timeout=1)
    backend = UserCache(dead, True, 60, CollectorRegistry()).backend
    results = await asyncio.gather(*(backend.read(u, 10, "b") for u in users[:5]), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    await dead.close()
