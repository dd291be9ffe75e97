"""The cheap request path keeps every observable behaviour: the /healthz answer, its 405s, the
latency histogram and the access-log line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


def _client(bundle: Path, liveness: bool = True, **kw: object) -> TestClient:
    app = create_app(Settings(bundles=[bundle], api_key="k", **kw))
    if not liveness:  # the declared FastAPI route answers instead
        app.user_middleware[:] = [m for m in app.user_middleware if m.cls.__name__ != "Liveness"]
    return TestClient(app)


def test_healthz_answer_is_the_declared_routes(bundle_path: Path) -> None:
    with _client(bundle_path, access_log=False) as fast, _client(bundle_path, False, access_log=False) as routed:
        for method, path in [("GET", "/healthz"), ("GET", "/healthz?x=1"), ("HEAD", "/healthz"), ("POST", "/healthz")]:
            a, b = fast.request(method, path), routed.request(method, path)
            assert (a.status_code, a.content, a.headers.get("content-type")) == (
                b.status_code,
                b.content,
                b.headers.get("content-type"),
            ), (method, path)
            assert a.headers.get("allow") == b.headers.get("allow")
        assert fast.get("/healthz").json() == {"status": "ok"}


def test_histogram_counts_each_request_under_its_template(bundle_path: Path) -> None:
    with _client(bundle_path, access_log=False) as c:
        for _ in range(3):
            assert c.get("/healthz").status_code == 200
        assert c.get("/recommend/nobody?k=5").status_code == 200
        assert c.get("/recommend/nobody?k=0").status_code == 422
        text = c.get("/metrics").text
    count = 'seqrec_http_request_duration_seconds_count{method="GET",route="%s",status="%s"}'
    assert f"{count % ('/healthz', '200')} 3.0" in text
    assert f"{count % ('/recommend/{user_id}', '200')} 1.0" in text
    assert f"{count % ('/recommend/{user_id}', '422')} 1.0" in text


def test_access_log_line_is_json_without_query_values(bundle_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _client(bundle_path) as c:
        capsys.readouterr()
        assert c.get("/recommend/someone?k=7").status_code == 200
        assert c.get("/nowhere").status_code == 404
        lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if '"route"' in ln]
    assert [(x["method"], x["route"], x["status"]) for x in lines] == [
        ("GET", "/recommend/{user_id}", 200),
        ("GET", "unmatched", 404),
    ]
    assert all(set(x) == {"ts", "method", "route", "status", "ms", "client"} for x in lines)
    assert all(isinstance(x["ms"], float) and x["ms"] > 0 and x["client"] == "testclient" for x in lines)
    assert "someone" not in json.dumps(lines)


PATHS = ["/recommend/rp-user", "/recommend/nobody", "/recommend/caf%C3%A9", "/recommend/%20pad", "/recommend/"]
QUERIES = [
    "",
    "k=5",
    "k=0",
    "k=1000",
    "k=1001",
    "k=abc",
    "k=05",
    "k=+5",
    "k=%35",
    "k=5&k=6",
    "k",
    "k=5&",
    "&&",
    "exclude_seen=false&k=3",
    "exclude_seen=yes",
    "exclude_seen=True",
    "explain=1&k=2",
    "explain=maybe",
    "model=tiny-sasrec",
    "model=",
    "model=nope",
    "diversify=0.5",
    "max_per_cluster=2",
    "unknown=1&k=4",
    "filter=price+%3C+100",
    "filter=in+in",
    "filter=&k=3",
    "filter=%FF",
    "filter=a&filter=b",
]


def test_pre_routed_reads_answer_exactly_as_the_route(bundle_path: Path) -> None:
    """Every path x query: the same status, body and content type with and without FastRead."""
    kw = {"access_log": False, "online_tracking": False}
    with _client(bundle_path, **kw) as fast, _client(bundle_path, fast_reads=False, **kw) as routed:
        b = fast.app.state.seqrec.registry.get(None)
        events = [{"user_id": "rp-user", "item_id": i, "timestamp": 10 + n} for n, i in enumerate(b.item_ids[:12])]
        for c in (fast, routed):
            assert c.post("/events", json={"events": events}, headers={"X-API-Key": "k"}).status_code == 200
        for path in PATHS:
            for query in QUERIES:
                url = f"{path}?{query}" if query else path
                a, r = fast.get(url), routed.get(url)
                assert (a.status_code, a.content, a.headers.get("content-type")) == (
                    r.status_code,
                    r.content,
                    r.headers.get("content-type"),
                ), url


def test_plain_query_reads_only_what_it_reads_without_doubt() -> None:
    from app.api.routes.recommend import plain_query

    assert plain_query(b"") == (10, None, True, False, None)
    assert plain_query(b"k=7&model=m&exclude_seen=0&explain=true&other=x") == (7, "m", False, True, None)
    assert plain_query(b"filter=price+%3C+100&k=3") == (3, None, True, False, "price < 100")
    doubts = (b"k=0", b"k=1001", b"k=%37", b"k=+7", b"k=7&k=8", b"k", b"model=", b"explain=yes", b"diversify=1")
    doubts += (b"filter=", b"filter=%FF", b"filter=a&filter=b", b"filter=" + b"a" * 2001)
    for doubtful in doubts:
        assert plain_query(doubtful) is None, doubtful


def _bodies(items: list[str]) -> list[tuple[str, bytes, dict[str, str]]]:
    import time as _time

    ok = {
        "events": [{"user_id": "w", "item_id": items[n], "timestamp": 100 + n, "event_id": f"e{n}"} for n in range(5)]
    }
    js = {"content-type": "application/json"}
    key = {"X-API-Key": "k", **js}
    future = {"events": [{"user_id": "w", "item_id": items[0], "timestamp": _time.time() + 10**6}]}
    return [
        ("valid", json.dumps(ok).encode(), key),
        ("replayed", json.dumps(ok).encode(), key),
        (
            "iso time, no event id",
            b'{"events": [{"user_id": "w", "item_id": "x", "timestamp": "2023-11-14T22:15:00Z"}]}',
            key,
        ),
        ("no key", json.dumps(ok).encode(), js),
        ("wrong key", json.dumps(ok).encode(), {"X-API-Key": "no", **js}),
        ("not json", b'{"events": [', key),
        ("bad id", '{"events": [{"user_id": "a\u200bb", "item_id": "i"}]}'.encode(), key),
        ("bool time", b'{"events": [{"user_id": "w", "item_id": "i", "timestamp": true}]}', key),
        ("NaN time", b'{"events": [{"user_id": "w", "item_id": "i", "timestamp": NaN}]}', key),
        ("extra field", b'{"events": [{"user_id": "w", "item_id": "i", "x": 1}]}', key),
        ("empty", b'{"events": []}', key),
        ("too many", json.dumps({"events": ok["events"] * 3}).encode(), key),
        ("far future", json.dumps(future).encode(), key),
        ("text/plain", json.dumps(ok).encode(), {"X-API-Key": "k", "content-type": "text/plain"}),
    ]


def test_pre_routed_writes_answer_exactly_as_the_route(bundle_path: Path) -> None:
    """Each body (valid, replayed, malformed, unauthorised, too large, too far ahead): the same
    status, JSON and headers with and without FastWrite, and the same stored histories."""
    kw = {"access_log": False, "max_batch": 12}
    with _client(bundle_path, **kw) as fast, _client(bundle_path, fast_reads=False, **kw) as routed:
        items = fast.app.state.seqrec.registry.get(None).item_ids
        for name, body, headers in _bodies(items):
            a, r = (
                fast.post("/events", content=body, headers=headers),
                routed.post("/events", content=body, headers=headers),
            )
            assert (a.status_code, a.json(), a.headers.get("retry-after")) == (
                r.status_code,
                r.json(),
                r.headers.get("retry-after"),
            ), name
        assert (
            fast.get("/recommend/w").json()["history_length"] == routed.get("/recommend/w").json()["history_length"] > 0
        )


def test_pre_routed_writes_keep_the_rate_limit(bundle_path: Path) -> None:
    kw = {"access_log": False, "write_rate_per_s": 0.001, "write_burst": 2}
    with _client(bundle_path, **kw) as fast, _client(bundle_path, fast_reads=False, **kw) as routed:
        items = fast.app.state.seqrec.registry.get(None).item_ids
        _, body, headers = _bodies(items)[0]
        for c in (fast, routed):
            got = [c.post("/events", content=body, headers=headers) for _ in range(3)]
            assert [g.status_code for g in got] == [200, 200, 429]
            assert got[2].headers["retry-after"] and "rate limit" in got[2].json()["detail"]
        # A body that is not JSON is refused before any token is taken, on both paths.
        bad = [c.post("/events", content=b"{", headers=headers) for c in (fast, routed)]
        assert [b.status_code for b in bad] == [400, 400]
