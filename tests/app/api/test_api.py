"""HTTP contract through the ASGI app (TestClient): status codes, fallbacks, reload, docs, metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.schemas import RecommendOut
from app.main import bounded, create_app
from app.settings import Settings
from tests.support.procs import free_port

KEY = {"X-API-Key": "k3y"}


def make_client(bundle: Path, **kw) -> TestClient:
    return TestClient(create_app(Settings(bundles=[bundle], api_key="k3y", **kw)))


@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest, bundle_path: Path, key_prefix: str) -> Iterator[TestClient]:
    kw = {}
    if request.param == "redis":
        kw = {"redis_url": request.getfixturevalue("redis_url"), "key_prefix": key_prefix}
    with make_client(bundle_path, max_batch=50, max_body_bytes=10_000, **kw) as c:
        yield c


def items(c: TestClient, n: int) -> list[str]:
    return c.app.state.seqrec.registry.get(None).item_ids[:n]


def test_events_then_recommend_from_model(client: TestClient) -> None:
    known = items(client, 3)
    evs = [{"user_id": "alice", "item_id": i, "timestamp": 1000 + n, "event_id": f"e{n}"} for n, i in enumerate(known)]
    evs.append({"user_id": "alice", "item_id": "future-item", "timestamp": 2000})
    r = client.post("/events", json={"events": evs}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 4, "duplicates": 0, "too_old": 0, "unknown_to_model": 1, "model": "tiny-sasrec"}
    r = client.post("/events", json={"events": evs[:2]}, headers=KEY)
    assert r.json()["duplicates"] == 2 and r.json()["accepted"] == 0
    r = client.get("/recommend/alice", params={"k": 7})
    body = r.json()
    assert r.status_code == 200 and body["source"] == "model" and body["history_length"] == 3
    # The route serialises its own JSON: it must still be exactly the documented response model.
    assert RecommendOut.model_validate_json(r.content).model_dump(mode="json", exclude_unset=True) == body
    assert r.headers["content-type"] == "application/json"
    got = [x["item_id"] for x in body["items"]]
    assert len(got) == 7 and not set(got) & set(known)  # seen items dropped
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)
    with_seen = client.get("/recommend/alice", params={"k": 7, "exclude_seen": False}).json()
    assert with_seen["source"] == "model"


def test_unknown_user_gets_popularity(client: TestClient) -> None:
    r = client.get("/recommend/nobody?k=3")
    body = r.json()
    assert RecommendOut.model_validate_json(r.content).model_dump(mode="json", exclude_unset=True) == body
    b = client.app.state.seqrec.registry.get(None)
    assert body["source"] == "popularity"
    assert [x["item_id"] for x in body["items"]] == b.external(b.popular[:3])


@pytest.mark.parametrize(
    ("path", "field"),
    [("/recommend/u?k=0", "k"), ("/recommend/u?k=1001", "k"), ("/recommend/u?k=abc", "k")],
)
def test_bad_query_is_422(client: TestClient, path: str, field: str) -> None:
    r = client.get(path)
    assert r.status_code == 422 and field in r.json()["detail"]


def test_unknown_model_is_422(client: TestClient) -> None:
    r = client.get("/recommend/u", params={"model": "<script>alert(1)</script>"})
    # The valid names are listed; the input is not echoed back.
    assert r.status_code == 422 and r.json()["detail"] == "unknown model; serving: sasrec, tiny-sasrec"
    assert "script" not in r.text
    assert client.get("/recommend/u?model=sasrec").status_code == 200  # by kind
    assert client.get("/recommend/u?model=tiny-sasrec").status_code == 200  # by bundle name


def test_bad_events_are_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/events", json={"events": [{"user_id": "u", "item_id": "ok"}, {"user_id": "u"}]}, headers=KEY)
    assert r.status_code == 422 and r.json()["detail"].startswith("body.events.1.item_id")
    r = client.post("/events", json={"events": []}, headers=KEY)
    assert r.status_code == 422


@pytest.mark.parametrize("raw", [b'{"events":[', b"hello world", b"{not json", b"\xff\xfe\x00"])
def test_malformed_json_is_400_as_documented(client: TestClient, raw: bytes) -> None:
    r = client.post("/events", content=raw, headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "not valid JSON" in r.json()["detail"] or "parsing the body" in r.json()["detail"]
    spec = client.get("/openapi.json").json()
    assert "400" in spec["paths"]["/events"]["post"]["responses"]


def test_counts_under_trimming_say_what_happened(bundle_path: Path, key_prefix: str, redis_url: str) -> None:
    """41 events, 40 kept: the oldest is too old, not accepted; its replay is neither accepted nor
    a duplicate (the store no longer holds it); a full replay is 40 duplicates + 1 too old."""
    with make_client(bundle_path, redis_url=redis_url, key_prefix=key_prefix, max_history=40) as c:
        evs = [
            {"user_id": "trim", "item_id": "50", "timestamp": 1_700_000_000 + k, "event_id": f"p{k}"} for k in range(41)
        ]
        r = c.post("/events", json={"events": evs}, headers=KEY).json()
        assert (r["accepted"], r["duplicates"], r["too_old"]) == (40, 0, 1)
        r = c.post("/events", json={"events": evs[:1]}, headers=KEY).json()
        assert (r["accepted"], r["duplicates"], r["too_old"]) == (0, 0, 1)
        r = c.post("/events", json={"events": evs}, headers=KEY).json()
        assert (r["accepted"], r["duplicates"], r["too_old"]) == (0, 40, 1)
        assert "too_old" in c.get("/openapi.json").json()["components"]["schemas"]["EventsOut"]["properties"]


def test_events_from_the_far_future_are_refused(client: TestClient) -> None:
    now = time.time()
    ok = {"user_id": "clock", "item_id": "i", "timestamp": now + 3600}
    far = {"user_id": "clock", "item_id": "i", "timestamp": "3000-01-01T00:00:00Z"}
    r = client.post("/events", json={"events": [ok, far]}, headers=KEY)
    assert r.status_code == 422 and r.json()["detail"].startswith("body.events.1.timestamp: ")
    assert client.portal.call(client.app.state.seqrec.store.history, "clock") == []  # nothing stored
    assert client.post("/events", json={"events": [ok]}, headers=KEY).status_code == 200
    spec = client.get("/openapi.json").json()["components"]["schemas"]["EventIn"]["properties"]["timestamp"]
    number = next(s for s in spec["anyOf"] if s.get("type") == "number")
    assert (number["minimum"], number["exclusiveMaximum"]) == (0, 1e11)


def test_clock_skew_limit_can_be_turned_off(bundle_path: Path) -> None:
    with make_client(bundle_path, max_clock_skew_s=0) as c:
        far = {"user_id": "u", "item_id": "i", "timestamp": "3000-01-01T00:00:00Z"}
        assert c.post("/events", json={"events": [far]}, headers=KEY).status_code == 200


def test_limits_are_413(client: TestClient) -> None:
    r = client.post("/events", json={"events": [{"user_id": "u", "item_id": "i"}] * 51}, headers=KEY)
    assert r.status_code == 413 and "limit of 50" in r.json()["detail"]
    big = {"events": [{"user_id": "u" * 100, "item_id": "i" * 100}] * 50}
    r = client.post("/events", content=json.dumps(big), headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 413 and "body exceeds" in r.json()["detail"]


def test_api_key_required_on_writes(client: TestClient) -> None:
    ev = {"events": [{"user_id": "u", "item_id": "i"}]}
    assert client.post("/events", json=ev).status_code == 401
    assert client.post("/events", json=ev, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/admin/reload").status_code == 401
    assert client.get("/recommend/u").status_code == 200  # reads are open


def test_health_ready_metrics_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["store_ok"] and ready["bundles"][0]["name"] == "tiny-sasrec"
    client.get("/recommend/someone")
    text = client.get("/metrics").text
    assert 'seqrec_http_request_duration_seconds_count{method="GET",route="/recommend/{user_id}"' in text
    assert 'seqrec_recommend_fallback_total{reason="no_history"}' in text
    assert "someone" not in text  # no per-user labels
    spec = client.get("/openapi.json").json()
    assert {"/events", "/recommend/{user_id}", "/healthz", "/readyz", "/metrics", "/admin/reload"} <= set(spec["paths"])
    assert spec["components"]["schemas"]["EventsIn"]["examples"]


def test_reload_swaps_good_and_rejects_broken(client: TestClient, bundle_path: Path, tmp_path: Path) -> None:
    r = client.post("/admin/reload", headers=KEY)
    assert r.status_code == 200 and r.json()["default_model"] == "tiny-sasrec"
    reached = r.json()["reached"]
    store = client.app.state.seqrec.store.kind
    # In process there is one process, and the answer says so; with Redis this process is the only live one.
    assert reached["scope"] == ("process" if store == "memory" else "redis") and reached["complete"]
    assert reached["applied"] == [client.app.state.seqrec.items.worker] and not reached["pending"]
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    (broken / "model.onnx").write_bytes(b"garbage")
    r = client.post("/admin/reload", json={"bundles": [str(broken)]}, headers=KEY)
    assert r.status_code == 422 and "previous bundles keep serving" in r.json()["detail"]
    assert client.get("/recommend/u").status_code == 200
    assert client.app.state.seqrec.registry.get(None).path == bundle_path


def test_redis_down_503_on_write_and_fast_popularity_on_read(bundle_path: Path) -> None:
    with make_client(bundle_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.1) as c:
        r = c.post("/events", json={"events": [{"user_id": "u", "item_id": "i"}]}, headers=KEY)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        detail = r.json()["detail"]
        assert detail == "event store unavailable; no event of this batch is acknowledged; retry after 1 s"
        for leak in ("127.0.0.1", "redis", "Error", "Connection"):  # no address, no exception text
            assert leak not in r.text
        r = c.post("/admin/reload", headers=KEY)
        assert r.status_code == 503 and "127.0.0.1" not in r.text and r.headers["Retry-After"] == "1"
        body = c.get("/recommend/u?k=5").json()
        assert body["source"] == "popularity" and len(body["items"]) == 5
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200
        assert 'seqrec_recommend_fallback_total{reason="store_unavailable"}' in c.get("/metrics").text


def test_untimed_events_keep_batch_order(client: TestClient) -> None:
    a, b = items(client, 2)
    evs = [{"user_id": "bob", "item_id": i} for i in (b, a, b)]
    r = client.post("/events", json={"events": evs}, headers=KEY)
    assert r.json()["accepted"] == 3  # the same item twice in a batch is two events
    store = client.app.state.seqrec.store
    assert client.portal.call(store.history, "bob") == [b, a, b]


@pytest.mark.anyio
async def test_shutdown_wait_is_bounded_even_when_a_task_swallows_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn = True

    async def swallows_cancel() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if not stubborn:
                    raise

    task = asyncio.create_task(swallows_cancel())
    await asyncio.sleep(0)
    task.cancel()
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="seqrec.app"):
        await bounded([task], "background tasks", 0.2)
    assert time.monotonic() - t0 < 5
    assert not task.done()  # still alive: the wait gave up rather than hang
    assert "did not finish within 0.2 s" in caplog.text and "swallows_cancel" in caplog.text  # where it hangs
    stubborn = False
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


def test_reload_reports_a_process_that_cannot_apply_it(
    bundle_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two app instances on one Redis: when one cannot load the announced configuration (a path
    missing on that replica), it keeps serving and the reload answer names it under `rejected`."""
    import app.fleet.follow
    from app.bundles.bundle import BundleError

    def settings() -> Settings:
        return Settings(
            bundles=[bundle_path], api_key="k3y", redis_url=redis_url, key_prefix=key_prefix, reload_ack_timeout=10
        )

    with TestClient(create_app(settings())) as a, TestClient(create_app(settings())) as b:
        before = b.app.state.seqrec.registry

        async def missing_here(*args, **kwargs):
            raise BundleError("/bundles/x is not a directory")

        # Only the follower path (how other processes apply a reload) fails; A loads it itself.
        monkeypatch.setattr(app.fleet.follow, "prepare_configuration", missing_here)
        r = a.post("/admin/reload", headers=KEY)
        assert r.status_code == 200, r.text
        reached = r.json()["reached"]
        worker_b = b.app.state.seqrec.items.worker
        assert reached["applied"] == [a.app.state.seqrec.items.worker]
        assert reached["rejected"] == {worker_b: "rejected: /bundles/x is not a directory"}
        assert not reached["complete"] and reached["live"] == 2
        assert b.app.state.seqrec.registry is before  # B keeps serving what it had
        assert b.get("/recommend/u").status_code == 200
