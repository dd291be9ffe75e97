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
