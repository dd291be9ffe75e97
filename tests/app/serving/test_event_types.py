"""Event types and negative feedback: typed events through the store (window, exclusion set, log),
old windows and log entries without a type, the settings, POST /events and GET/POST /recommend,
and the snapshot's `type` column."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import create_app
from app.serving.events import event_types
from app.settings import Settings
from app.stores import ClusterStore, Event, EventStore, MemoryStore, RedisStore
from tests.support.parity import PATIENT_STORE

N = 5
KEY = {"X-API-Key": "k3y"}
DISLIKE = "dislike"
TYPES = event_types(Settings(bundles=[Path("unused")]))  # the defaults: view, cart, purchase, dislike


def typed(user: str, item: str, ts: float, type_: str | None = None, eid: str | None = None) -> Event:
    return TYPES.event(user, item, ts, eid or f"t{ts}", type_)


# ------------------------------------------------------------------------------------------ the store
@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        s: EventStore = MemoryStore(max_history=N, ttl_s=60, max_excluded=3)
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        s = ClusterStore(url, max_history=N, ttl_s=60, prefix=key_prefix, read_timeout=1.0, max_excluded=3)
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, max_history=N, ttl_s=60, prefix=key_prefix, read_timeout=1.0, max_excluded=3)
    yield s
    await s.close()


@pytest.mark.anyio
async def test_a_negative_event_is_stored_but_never_read_as_history(store: EventStore) -> None:
    r = await store.append(
        [typed("u", "a", 1), typed("u", "b", 2, "purchase"), typed("u", "c", 3, DISLIKE), typed("u", "d", 4, "view")]
    )
    assert (r.accepted, r.duplicates, r.too_old) == (4, 0, 0)  # the dislike is stored and counted
    assert await store.history("u") == ["a", "b", "d"]
    assert await store.history_times("u") == (["a", "b", "d"], [1.0, 2.0, 4.0])
    got = await store.read("u", None, with_times=True)
    assert (got.items, got.times, got.excluded) == (["a", "b", "d"], [1.0, 2.0, 4.0], ["c"])
    assert (await store.read("u")).times is None
    # Replays are duplicates, typed ones included; an explicit default type is the untyped event.
    again = await store.append([typed("u", "c", 3, DISLIKE), typed("u", "a", 1, "view")])
    assert (again.accepted, again.duplicates) == (0, 2)


@pytest.mark.anyio
async def test_the_exclusion_outlives_the_window_and_a_too_old_dislike_still_excludes(store: EventStore) -> None:
    await store.append([typed("u", "x", 10, DISLIKE)])
    await store.append([typed("u", f"i{t}", t) for t in range(20, 30)])  # trims the dislike out
    assert await store.history("u") == [f"i{t}" for t in range(25, 30)]
    assert await store.excluded("u") == ["x"]
    r = await store.append([typed("u", "y", 1, DISLIKE)])  # older than every kept event
    assert (r.accepted, r.too_old) == (0, 1)
    assert await store.excluded("u") == ["y", "x"]  # by the excluding events' times
    assert (await store.read("u")).excluded == ["y", "x"]


@pytest.mark.anyio
async def test_the_exclusion_set_keeps_the_newest_max_excluded_items(store: EventStore) -> None:
    await store.append([typed("u", f"x{t}", t, DISLIKE) for t in range(1, 6)])  # max_excluded = 3
    assert await store.excluded("u") == ["x3", "x4", "x5"]
    assert await store.excluded("nobody") == []


@pytest.mark.anyio
async def test_the_log_keeps_the_type(store: EventStore) -> None:
    await store.append([typed("u", "a", 1), typed("u", "b", 2, "purchase"), typed("u", "c", 3, DISLIKE)])
    logged = {e.event.item_id: e.event async for e in store.log_entries()}
    assert {i: (e.type, e.event_id, e.timestamp) for i, e in logged.items()} == {
        "a": (None, "t1", 1.0),
        "b": ("purchase", "t2", 2.0),
        "c": (DISLIKE, "t3", 3.0),
    }


@pytest.mark.anyio
async def test_exclusions_expire_with_the_window(key_prefix: str, redis_url: str) -> None:
    for s in (
        MemoryStore(max_history=N, ttl_s=1),
        RedisStore(redis_url, max_history=N, ttl_s=1, prefix=key_prefix, read_timeout=1.0),
    ):
        await s.append([typed("u", "x", 1, DISLIKE)])
        await s.append([typed("u", "a", 2)])
        assert await s.excluded("u") == ["x"]
        time.sleep(1.2)
        assert await s.excluded("u") == [] and await s.history("u") == []
        await s.close()


@pytest.mark.anyio
async def test_old_windows_and_log_entries_without_a_type_still_read(redis_url: str, key_prefix: str) -> None:
    """What a server without types wrote (member `event id US item`, log fields u, m, t) reads as
    default-type events after the upgrade, and a replay of such an event is still a duplicate."""
    import redis.asyncio as aredis

    raw = aredis.Redis.from_url(redis_url)
    await raw.zadd(f"{key_prefix}h:old", {"e1\x1fa": 1.0, "e2\x1fb": 2.0})
    await raw.xadd(f"{key_prefix}log", {"u": "old", "m": "e1\x1fa", "t": "1.0"})
    store = RedisStore(redis_url, max_history=N, ttl_s=60, prefix=key_prefix, read_timeout=1.0)
    assert await store.history("old") == ["a", "b"]
    assert (await store.read("old")).excluded == []
    r = await store.append([typed("old", "a", 1.0, "view", eid="e1"), typed("old", "c", 3.0, DISLIKE)])
    assert (r.accepted, r.duplicates) == (1, 1)
    assert await store.history("old") == ["a", "b"] and await store.excluded("old") == ["c"]
    logged = [e.event async for e in store.log_entries()]
    assert [(e.item_id, e.type) for e in logged] == [("a", None), ("c", DISLIKE)]
    # An untyped event's log entry has exactly the fields it had before types existed.
    fields = [f for _, f in await raw.xrange(f"{key_prefix}log")]
    assert sorted(fields[0]) == [b"m", b"t", b"u"] and fields[1][b"y"] == DISLIKE.encode()
    assert fields[1][b"m"] == b"t3.0\x1fc"  # the log's `m` keeps its old form; the type is in `y`
    await store.close()
    await raw.aclose()


# --------------------------------------------------------------------------------------- the settings
def test_the_settings_refuse_types_that_do_not_fit() -> None:
    ok = Settings(bundles=[Path("b")], event_types="view,buy,hide", negative_event_types="hide", exclude_types="buy")
    assert ok.event_types == ["view", "buy", "hide"] and ok.exclude_types == ["buy"]
    roles = event_types(ok)
    assert roles.excluding("buy") and roles.excluding("hide") and not roles.excluding("view")
    bad: list[dict[str, Any]] = [
        {"event_types": "view,view"},
        {"event_types": "view,sp ace"},
        {"default_event_type": "click"},
        {"negative_event_types": "hate"},
        {"negative_event_types": "view"},  # the default type cannot be negative
        {"exclude_types": "view,*"},
    ]
    for kw in bad:
        with pytest.raises(ValidationError):
            Settings(bundles=[Path("b")], **kw)


# ------------------------------------------------------------------------------------------- the API
@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest, bundle_path: Path, key_prefix: str) -> Iterator[TestClient]:
    kw: dict[str, Any] = {}
    if request.param == "redis":
        # A read cut short (a loaded machine) would answer popularity: these tests are about the lists.
        kw = {"redis_url": request.getfixturevalue("redis_url"), "key_prefix": key_prefix, **PATIENT_STORE}
    with TestClient(create_app(Settings(bundles=[bundle_path], api_key="k3y", max_history=20, **kw))) as c:
        yield c


def ids(c: TestClient) -> list[str]:
    return c.app.state.seqrec.registry.get(None).item_ids  # type: ignore[attr-defined, no-any-return]


def post(c: TestClient, events: list[dict[str, Any]]) -> dict[str, Any]:
    r = c.post("/events", json={"events": events}, headers=KEY)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def listed(c: TestClient, user: str, k: int) -> list[str]:
    return [i["item_id"] for i in c.get(f"/recommend/{user}", params={"k": k}).json()["items"]]


def test_an_unknown_type_is_refused_naming_the_allowed_ones(client: TestClient) -> None:
    item = ids(client)[0]
    for path, body in [
        ("/events", {"events": [{"user_id": "u", "item_id": item, "type": t} for t in ("view", "secret-x9")]}),
        ("/recommend", {"items": [item, item], "types": ["view", "secret-x9"]}),
    ]:
        r = client.post(path, json=body, headers=KEY)
        assert r.status_code == 422, r.text
        assert "view, cart, purchase, dislike" in r.json()["detail"] and "secret-x9" not in r.text
        assert 1 in r.json()["errors"][0]["loc"]  # names the event (or item) by its position
    assert client.get("/recommend/u").json()["history_length"] == 0  # nothing of the batch stored
    r = client.post("/recommend", json={"items": [item], "types": ["view", "view"]})
    assert r.status_code == 422 and "one type per item" in r.text


def test_a_disliked_item_is_never_recommended_again_nor_read_as_history(client: TestClient) -> None:
    items = ids(client)
    history = [items[n] for n in (3, 17, 4, 60, 61, 90, 12)]
    k = min(len(items) - len(history) - 1, 1000)  # every item not seen: the disliked one would be listed
    evs = [{"item_id": i, "timestamp": 1_700_000_000 + 60 * n} for n, i in enumerate(history)]
    post(client, [{"user_id": "control", **e} for e in evs])
    top = listed(client, "control", k)
    hated = top[0]
    post(client, [{"user_id": "hater", **e} for e in evs])
    post(client, [{"user_id": "hater", "item_id": hated, "timestamp": 1_700_001_000, "type": DISLIKE}])
    for _ in range(2):  # the second read comes from the user cache where there is one
        got = client.get("/recommend/hater", params={"k": k}).json()
        assert got["history_length"] == len(history)  # the dislike is no model input
        got_ids = [i["item_id"] for i in got["items"]]
        assert got_ids[: k - 1] == top[1:] and hated not in got_ids
    # Asking for seen items back does not bring a disliked one back.
    back = client.get("/recommend/hater", params={"k": k, "exclude_seen": False}).json()["items"]
    assert hated not in [i["item_id"] for i in back] and history[0] in [i["item_id"] for i in back]
    # Scores unchanged: the model read the same history as the control's.
    control = client.get("/recommend/control", params={"k": 5}).json()["items"]
    assert client.get("/recommend/hater", params={"k": 4}).json()["items"] == control[1:]
    # The window trims the dislike out; the item stays away (and is not among the new events).
    later = [i for i in items[100:] if i != hated][:25]
    post(client, [{"user_id": "hater", "item_id": i, "timestamp": 1_700_002_000 + n} for n, i in enumerate(later)])
    assert hated not in listed(client, "hater", min(len(items) - 26, 1000))
    # A dislike sent after a list was cached, too old for the window, still takes the item away.
    first = listed(client, "hater", 3)
    listed(client, "hater", 3)
    post(client, [{"user_id": "hater", "item_id": first[0], "timestamp": 1_600_000_000, "type": DISLIKE}])
    assert first[0] not in listed(client, "hater", 3)


def test_anonymous_types_equal_a_stored_users(client: TestClient) -> None:
    items = ids(client)
    seq = [items[n] for n in (5, 9, 33, 41)]
    types = ["view", "purchase", DISLIKE, "cart"]
    times = [1_700_000_000.0 + n for n in range(4)]
    post(
        client,
        [{"user_id": "v", "item_id": i, "timestamp": t, "type": y} for i, t, y in zip(seq, times, types, strict=True)],
    )
    stored = client.get("/recommend/v", params={"k": 8}).json()
    sent = client.post("/recommend", json={"items": seq, "times": times, "types": types, "k": 8}).json()
    assert sent == {k: v for k, v in stored.items() if k != "user_id"}
    assert sent["history_length"] == 3
    # Without the disliked item in the sequence, but its item asked away: the same list.
    rest = [0, 1, 3]
    plain = {"items": [seq[n] for n in rest], "times": [times[n] for n in rest], "exclude": [seq[2]], "k": 8}
    got = client.post("/recommend", json=plain).json()
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in sent["items"]]


def test_exclude_types_keep_only_those_items_away(bundle_path: Path) -> None:
    settings = Settings(bundles=[bundle_path], api_key="k3y", exclude_types="purchase")
    with TestClient(create_app(settings)) as c:
        items = ids(c)
        viewed, bought = items[7], items[8]
        k = min(len(items), 1000)
        post(c, [{"user_id": "s", "item_id": viewed, "timestamp": 1_700_000_000}])
        post(c, [{"user_id": "s", "item_id": bought, "timestamp": 1_700_000_001, "type": "purchase"}])
        got = listed(c, "s", k)
        assert viewed in got and bought not in got  # a viewed item may come back, a bought one never
        assert len(got) == len(items) - 1


# -------------------------------------------------------------------------------------- the snapshot
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_the_snapshot_has_a_type_column_when_any_event_has_one(
    redis_url: str, key_prefix: str, tmp_path: Path, suffix: str
) -> None:
    import asyncio

    import redis

    from training.snapshot import snapshot, snapshot_log

    async def write(events: list[Event]) -> None:
        s = RedisStore(redis_url, max_history=N, ttl_s=60, prefix=key_prefix)
        await s.append(events)
        await s.close()

    client = redis.Redis.from_url(redis_url)
    read = pl.read_csv if suffix == ".csv" else pl.read_parquet
    asyncio.run(write([typed("u", "a", 1), typed("u", "b", 2)]))
    for export in (snapshot_log, snapshot):
        out = export(client, tmp_path / f"plain-{export.__name__}{suffix}", prefix=key_prefix)
        assert read(out.path).columns == ["user_id", "item_id", "timestamp", "event_id"]  # as before types
    asyncio.run(write([typed("u", "c", 3, "purchase"), typed("u", "d", 4, DISLIKE)]))
    for export in (snapshot_log, snapshot):
        got = export(client, tmp_path / f"typed-{export.__name__}{suffix}", prefix=key_prefix, default_type="seen")
        df = read(got.path)
        assert df.columns == ["user_id", "item_id", "timestamp", "event_id", "type"]
        assert df.sort("timestamp").select("item_id", "event_id", "type").rows() == [
            ("a", "t1", "seen"),  # stored without a type: the deployment's default, named
            ("b", "t2", "seen"),
            ("c", "t3", "purchase"),
            ("d", "t4", DISLIKE),
        ]


# ---------------------------------------------------------------------------- two real API processes
def test_two_processes_on_one_redis_agree_on_a_dislike(bundle_path: Path, redis_url: str, tmp_path: Path) -> None:
    """One process takes the events, the other answers: the exclusion set is in Redis, next to the
    window, so every process sees it (its cached list included)."""
    import httpx

    from tests.support.procs import API_KEY, ApiProc

    prefix = f"seqrec-test-2p-{time.time_ns()}:"
    env = {"SEQREC_KEY_PREFIX": prefix, "SEQREC_MAX_HISTORY": "20"}
    with (
        ApiProc([bundle_path], redis_url, tmp_path, **env) as a,
        ApiProc([bundle_path], redis_url, tmp_path, **env) as b,
    ):
        items = httpx.get(f"{a.base}/recommend/nobody", params={"k": 50}).json()["items"]
        ids_ = [i["item_id"] for i in items]
        key = {"X-API-Key": API_KEY}
        evs = [{"user_id": "w", "item_id": i, "timestamp": 1_700_000_000 + n} for n, i in enumerate(ids_[:25])]
        assert httpx.post(f"{a.base}/events", json={"events": evs}, headers=key).status_code == 200
        first = [i["item_id"] for i in httpx.get(f"{b.base}/recommend/w", params={"k": 5}).json()["items"]]
        httpx.get(f"{b.base}/recommend/w", params={"k": 5})  # now from b's cached list
        late = {"user_id": "w", "item_id": first[0], "timestamp": 1_600_000_000, "type": DISLIKE}  # too old to keep
        r = httpx.post(f"{a.base}/events", json={"events": [late]}, headers=key)
        assert r.status_code == 200 and r.json()["too_old"] == 1
        for api in (a, b):
            got = httpx.get(f"{api.base}/recommend/w", params={"k": 5}).json()
            assert first[0] not in [i["item_id"] for i in got["items"]] and got["history_length"] == 20


# ------------------------------------------------------------------------ a bundle that reads types
def typed_bundle(src: Path, dst: Path) -> tuple[Path, Any, Any]:
    """`src` with model.onnx replaced by a graph that reads event types: user_vec = the sum of the
    history's item vectors plus the sum of a vector per event type (0 pads), declared in the manifest."""
    import hashlib
    import json
    import shutil

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    table = np.load(dst / "item_vectors.npy")
    items = np.vstack([np.zeros((1, table.shape[1]), np.float32), table]).astype(np.float32)  # row 0 pads
    kinds = np.random.default_rng(0).standard_normal((5, table.shape[1])).astype(np.float32) * 3
    kinds[0] = 0
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["items", "item_seq"], ["iv"]),
            helper.make_node("Gather", ["kinds", "event_type"], ["tv"]),
            helper.make_node("Add", ["iv", "tv"], ["both"]),
            helper.make_node("ReduceSum", ["both", "axis"], ["user_vec"], keepdims=0),
        ],
        "typed",
        [
            helper.make_tensor_value_info("item_seq", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("event_type", TensorProto.INT64, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("user_vec", TensorProto.FLOAT, ["batch", table.shape[1]])],
        [
            numpy_helper.from_array(items, "items"),
            numpy_helper.from_array(kinds, "kinds"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, dst / "model.onnx")
    manifest["files"]["model.onnx"] = hashlib.sha256((dst / "model.onnx").read_bytes()).hexdigest()
    manifest["event_types"] = {"input": "event_type", "names": ["view", "cart", "purchase", "dislike"]}
    manifest["name"] = "typed"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst, items, kinds


def test_a_bundle_that_reads_types_gets_each_events_type(bundle_path: Path, tmp_path: Path) -> None:
    import numpy as np

    path, items, kinds = typed_bundle(bundle_path, tmp_path / "typed")
    with TestClient(create_app(Settings(bundles=[path, bundle_path], api_key="k3y", default_model="tiny-sasrec"))) as c:
        reg = c.app.state.seqrec.registry  # type: ignore[attr-defined]
        typed_b, plain_b = reg.get("typed"), reg.get(None)
        assert typed_b.needs_types and not plain_b.needs_types and plain_b.manifest.event_types is None
        ids_ = typed_b.item_ids
        seq = [ids_[n] for n in (5, 9, 33, 41)]
        types = ["view", "purchase", DISLIKE, "cart"]
        evs = [
            {"user_id": "t", "item_id": i, "timestamp": 1_700_000_000 + n, **({"type": y} if y != "view" else {})}
            for n, (i, y) in enumerate(zip(seq, types, strict=True))
        ]
        post(c, evs)
        # What the graph computes for the events the model reads (the dislike is not): type ids 1, 3, 2.
        vec = items[[6, 10, 42]].sum(0) + kinds[[1, 3, 2]].sum(0)
        scores = items[1:] @ vec
        scores[[5, 9, 33, 41]] = -np.inf  # seen (and the disliked item)
        want = [ids_[n] for n in np.argsort(-scores, kind="stable")[:5]]
        for _ in range(2):
            got = c.get("/recommend/t", params={"k": 5, "model": "typed"}).json()
            assert [i["item_id"] for i in got["items"]] == want and got["history_length"] == 3
            assert [i["score"] for i in got["items"]] == pytest.approx(sorted(scores, reverse=True)[:5], rel=1e-4)
        sent = c.post("/recommend", json={"items": seq, "types": types, "k": 5, "model": "typed"}).json()
        assert [i["item_id"] for i in sent["items"]] == want
        # The types matter: the same items as views only give another vector, hence other scores.
        views = c.post("/recommend", json={"items": [seq[n] for n in (0, 1, 3)], "k": 5, "model": "typed"}).json()
        assert [i["score"] for i in views["items"]] != [i["score"] for i in sent["items"]]
        # A bundle without the field is served as before, next to it.
        assert c.get("/recommend/t", params={"k": 5}).json()["history_length"] == 3


def test_the_type_is_documented_in_openapi_with_examples() -> None:
    spec = create_app(Settings(bundles=[Path("unused")], api_key="x")).openapi()
    event = spec["components"]["schemas"]["EventIn"]
    assert "type" in event["properties"] and "SEQREC_EVENT_TYPES" in event["properties"]["type"]["description"]
    assert any("type" in e for e in event["examples"])
    assert "types" in spec["components"]["schemas"]["SequenceIn"]["properties"]
