"""Explicit bad-input cases (the fuzzer finds the unknown unknowns; these pin the known ones).

Through the ASGI app with the in-process store: oversized bodies and batches (413), huge or
control-character ids, wrong types, unknown fields, unicode ids, negative or absurd k,
missing or wrong API key (401, compared with secrets.compare_digest), write rate limit (429).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

import app.api.deps
from app.main import create_app
from app.serving.ratelimit import TokenBuckets
from app.settings import Settings

KEY = "s3cret-key"
H = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def client(deploy_bundle: Path) -> Iterator[TestClient]:
    settings = Settings(bundles=[deploy_bundle], api_key=KEY, max_batch=20, max_body_bytes=4096)
    with TestClient(create_app(settings)) as c:
        yield c


def ev(**kw) -> dict:
    return {"user_id": "u1", "item_id": "i1", **kw}


def post(c: TestClient, payload: object, headers: dict | None = None, **kw):
    return c.post("/events", json=payload, headers=H if headers is None else headers, **kw)


def test_oversized_body_is_413_before_parsing(client: TestClient) -> None:
    big = json.dumps({"events": [ev(item_id="x" * 100)] * 40})  # > 4096 bytes
    r = client.post("/events", content=big, headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]


def test_oversized_chunked_body_is_413(client: TestClient) -> None:
    # No Content-Length: the limit is enforced on the bytes received.
    chunks = (b'{"events": [' + b'{"user_id":"u","item_id":"i"},' * 50 for _ in range(3))
    r = client.post("/events", content=chunks, headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_oversized_batch_is_413(client: TestClient) -> None:
    r = post(client, {"events": [ev(event_id=str(n)) for n in range(21)]})
    assert r.status_code == 413 and "batch of 21" in r.json()["detail"]
    assert post(client, {"events": [ev(event_id=str(n)) for n in range(20)]}).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        ev(user_id="u" * 129),
        ev(item_id="i" * 129),
        ev(event_id="e" * 129),
        ev(user_id=""),
        ev(user_id="a\x00b"),
        ev(user_id="a\x1fb"),  # the store's own separator
        ev(item_id="line\nbreak"),
        ev(item_id="del\x7f"),
        ev(event_id="c1\x85"),
        ev(user_id="b-x/../../etc/passwd"),
        ev(item_id="bi-x/x"),
        ev(user_id="/"),
        ev(user_id="   "),
        ev(user_id=" padded "),
        ev(user_id="zero\u200bwidth"),
        ev(item_id="bidi\u202eid"),
        ev(user_id="\ufffd"),
    ],
    ids=[
        "long-user",
        "long-item",
        "long-event",
        "empty",
        "nul",
        "unit-sep",
        "newline",
        "del",
        "c1",
        "slash-traversal",
        "slash-item",
        "slash-only",
        "whitespace-only",
        "edge-whitespace",
        "zero-width",
        "bidi",
        "replacement-char",
    ],
)
def test_bad_ids_are_422(client: TestClient, bad: dict) -> None:
    r = post(client, {"events": [bad]})
    assert r.status_code == 422
    assert "\x00" not in r.text and "u" * 129 not in r.text  # inputs are not echoed back


@pytest.mark.parametrize(
    "path",
    [
        "/recommend/" + "u" * 129,
        "/recommend/a%00b",
        "/recommend/a%1Fb",
        "/ui/history/" + "u" * 129,
        "/ui/history/%0A",
        "/recommend/b-x%2F..%2F..%2Fetc%2Fpasswd",  # '/' can never be in an id: 422, not 404
        "/items/bi-x%2Fx",
        "/items/%2F",  # not 405
        "/recommend/%FF",  # undecodable bytes would become U+FFFD: refused, not merged into one user
        "/recommend/a%C3",
        "/recommend/%20%20",
        "/recommend/zero%E2%80%8Bwidth",
    ],
)
def test_bad_ids_in_paths_are_422(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 422


@pytest.mark.parametrize(
    "payload",
    [
        {"events": [ev(user_id=123)]},
        {"events": [ev(item_id=None)]},
        {"events": [ev(timestamp="yesterday")]},
        {"events": [ev(timestamp=True)]},
        {"events": [ev(timestamp=-5)]},
        {"events": [ev(timestamp=1e300)]},
        {"events": ev()},
        {"events": []},
        {"events": "u1,i1"},
        [ev()],
        "events",
        None,
    ],
    ids=[
        "int-id",
        "null-item",
        "word-time",
        "bool-time",
        "negative-time",
        "huge-time",
        "object",
        "empty",
        "string",
        "array",
        "str",
        "null",
    ],
)
def test_wrong_types_are_422(client: TestClient, payload: object) -> None:
    r = post(client, payload)
    assert r.status_code == 422
    body = r.json()
    assert isinstance(body["detail"], str) and isinstance(body["errors"], list)


def test_not_json_is_400(client: TestClient) -> None:
    for raw in (b"{not json", b'{"events":[', b"hello world", b"\xff\xfe\x00"):
        r = client.post("/events", content=raw, headers={**H, "Content-Type": "application/json"})
        assert r.status_code == 400, (raw, r.status_code)
    # No body at all is a missing field (422), like any other required field.
    assert client.post("/events", content=b"", headers={**H, "Content-Type": "application/json"}).status_code == 422


@pytest.mark.parametrize(
    "payload",
    [{"events": [ev(extra="x")]}, {"events": [ev()], "dry_run": True}, {"events": [ev(userId="u2")]}],
    ids=["event-field", "top-field", "misspelt"],
)
def test_unknown_fields_are_422(client: TestClient, payload: dict) -> None:
    assert post(client, payload).status_code == 422
    assert client.post("/admin/reload", json={"bundle": "x"}, headers=H).status_code == 422


@pytest.mark.parametrize("uid", ["用户-😀", "Ünïcödé", "עברית", "a b", "emoji🧪\\backslash", "x" * 128])
def test_unicode_ids_round_trip(client: TestClient, uid: str) -> None:
    items = client.app.state.seqrec.registry.get(None).item_ids[:3]
    r = post(client, {"events": [ev(user_id=uid, item_id=i, timestamp=1000 + n) for n, i in enumerate(items)]})
    r2 = post(client, {"events": [ev(user_id=uid, item_id="ñew-ítem-✓", timestamp=2000)]})
    assert r.status_code == 200 and r2.json()["unknown_to_model"] == 1
    rec = client.get(f"/recommend/{quote(uid, safe='')}", params={"k": 5})
    # Every id accepted on write is readable in every route.
    assert rec.status_code == 200, rec.text
    assert rec.json()["user_id"] == uid and rec.json()["history_length"] == 3
    hist = client.get(f"/ui/history/{quote(uid, safe='')}").json()
    assert [x["item_id"] for x in hist["items"]] == [*items, "ñew-ítem-✓"]


@pytest.mark.parametrize("k", ["-1", "0", "1001", "1000000", "99999999999999999999999", "abc", "1.5", "1e3", ""])
def test_absurd_k_is_422(client: TestClient, k: str) -> None:
    assert client.get(f"/recommend/u1?k={k}").status_code == 422


def test_k_at_the_limits(client: TestClient) -> None:
    assert len(client.get("/recommend/u1?k=1").json()["items"]) == 1
    assert client.get("/recommend/u1?k=1000").status_code == 200


def test_missing_or_wrong_api_key_is_401(client: TestClient) -> None:
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}, {"X-API-Key": KEY[:-1]}):
        r = post(client, {"events": [ev()]}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "APIKey"
        assert KEY not in r.text
    assert client.post("/admin/reload", json={}).status_code == 401
    assert client.get("/recommend/u1").status_code == 200  # reads need no key


def test_api_key_is_compared_in_constant_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison goes through secrets.compare_digest (time independent of where bytes differ)."""
    calls: list[tuple[bytes, bytes]] = []
    real = app.api.deps.secrets.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app.api.deps.secrets, "compare_digest", spy)
    assert post(client, {"events": [ev()]}, headers={"X-API-Key": "guess"}).status_code == 401
    assert post(client, {"events": [ev()]}).status_code == 200
    assert calls == [(b"guess", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_writes_are_rate_limited_per_key(deploy_bundle: Path) -> None:
    # A refill rate so slow that no token comes back during the test: no timing in the assertion.
    settings = Settings(bundles=[deploy_bundle], api_key=KEY, write_rate_per_s=0.001, write_burst=3)
    with TestClient(create_app(settings)) as c:
        codes = [post(c, {"events": [ev(event_id=str(n))]}).status_code for n in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = post(c, {"events": [ev(event_id="x")]})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert post(c, {"events": [ev()]}, headers={"X-API-Key": "wrong"}).status_code == 401  # auth first
        assert c.get("/recommend/u1").status_code == 200  # reads are not limited
        assert "seqrec_rate_limited_total 3.0" in c.get("/metrics").text


def test_token_buckets_are_per_caller() -> None:
    b = TokenBuckets(rate_per_s=1.0, burst=2)
    assert [b.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert b.take("b", now=0.0) == 0.0  # another key has its own budget
    assert b.take("a", now=1.0) == 0.0  # refilled at the rate
    assert b.take("a", now=1.0) > 0


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    # GET and DELETE /items/{item_id} are two routes; Allow must name both.
    r = client.options("/items/x")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
