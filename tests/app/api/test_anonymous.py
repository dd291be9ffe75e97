"""POST /recommend: an anonymous visitor's items in, top-k out, nothing stored and no user id. The
answer equals GET /recommend for a stored user with the same history (scores included), the same
rules apply, and every edge case (empty, unknown only, too many, mismatched times, a bad filter)
has its documented answer, never a 500."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.schemas import SequenceOut
from app.main import create_app
from app.settings import Settings

KEY = {"X-API-Key": "k3y"}


@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest, bundle_path: Path, key_prefix: str) -> Iterator[TestClient]:
    kw: dict[str, Any] = {}
    if request.param == "redis":
        kw = {"redis_url": request.getfixturevalue("redis_url"), "key_prefix": key_prefix}
    with TestClient(create_app(Settings(bundles=[bundle_path], api_key="k3y", max_history=50, **kw))) as c:
        yield c


def ids(c: TestClient) -> list[str]:
    return c.app.state.seqrec.registry.get(None).item_ids  # type: ignore[attr-defined, no-any-return]


def store(c: TestClient, user: str, items: list[str], times: list[float]) -> None:
    evs = [{"user_id": user, "item_id": i, "timestamp": t} for i, t in zip(items, times, strict=True)]
    assert c.post("/events", json={"events": evs}, headers=KEY).status_code == 200


def without_user(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "user_id"}


@pytest.mark.parametrize(
    "params",
    [
        {"k": 10},
        {"k": 25, "exclude_seen": False},
        {"k": 7, "filter": 'category = "even" and price < 90'},
        {"k": 5, "exclude": ["__first_unseen__"]},
    ],
)
def test_the_answer_equals_the_stored_users(client: TestClient, params: dict[str, Any]) -> None:
    catalogue = [
        {"item_id": i, "category": "even" if n % 2 == 0 else "odd", "price": n} for n, i in enumerate(ids(client))
    ]
    assert client.post("/catalog/items", json={"items": catalogue}, headers=KEY).status_code == 200
    items = [ids(client)[n] for n in (3, 17, 4, 60, 61, 3, 90, 12)]  # a repeated item too
    times = [1_700_000_000.0 + 60 * n for n in range(len(items))]
    store(client, "visitor", items, times)
    query = dict(params)
    if query.get("exclude") == ["__first_unseen__"]:
        first = client.get("/recommend/visitor", params={"k": 1}).json()["items"][0]["item_id"]
        query["exclude"] = [first]
    for _ in range(2):  # the second read comes from the user cache where there is one
        stored = client.get("/recommend/visitor", params=query).json()
        r = client.post("/recommend", json={"items": items, "times": times, **query})
        assert r.status_code == 200, r.text
        assert r.json() == without_user(stored) and "user_id" not in r.json()
        assert SequenceOut.model_validate_json(r.content).model_dump(mode="json", exclude_unset=True) == r.json()
    assert stored["source"] == "model" and stored["history_length"] == len(items)
    assert len(stored["items"]) == params["k"]
    # Times order the sequence, as the store orders events: sent shuffled, the answer is the same.
    order = [5, 0, 7, 2, 1, 6, 3, 4]
    shuffled = {"items": [items[n] for n in order], "times": [times[n] for n in order], **query}
    assert client.post("/recommend", json=shuffled).json() == without_user(stored)
    # Without times the list order is the order: the same here, where the times ascend.
    assert client.post("/recommend", json={"items": items, **query}).json() == without_user(stored)


def test_nothing_is_stored_or_counted(client: TestClient) -> None:
    settings = client.app.state.seqrec.settings  # type: ignore[attr-defined]

    def served() -> list[str]:
        return [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith("seqrec_online_served")]

    def keys() -> list[str]:
        if settings.redis_url is None:
            return []
        import redis

        return sorted(redis.Redis.from_url(settings.redis_url).keys(f"{settings.key_prefix}*"))

    client.get("/recommend/someone")  # a stored user's answer is counted: the online series exist
    # Its served list reaches Redis in the background (batched): wait for it before comparing.
    deadline = time.monotonic() + 5
    while settings.redis_url and not any(b"sl:someone" in k for k in keys()) and time.monotonic() < deadline:
        time.sleep(0.02)
    counted, stored = served(), keys()
    for _ in range(3):
        assert client.post("/recommend", json={"items": ids(client)[:5]}).status_code == 200
    assert served() == counted and keys() == stored


@pytest.mark.parametrize(
    ("body", "source", "fallback"),
    [
        ({"items": []}, "popularity", "no_history"),
        ({"items": ["never-seen-1", "never-seen-2"]}, "popularity", "no_history"),
    ],
)
def test_empty_or_unknown_sequences_get_popularity(
    client: TestClient, body: dict[str, Any], source: str, fallback: str
) -> None:
    r = client.post("/recommend", json={**body, "k": 4})
    b = client.app.state.seqrec.registry.get(None)  # type: ignore[attr-defined]
    assert r.status_code == 200
    got = r.json()
    assert (got["source"], got["fallback"], got["history_length"]) == (source, fallback, 0)
    assert [x["item_id"] for x in got["items"]] == b.external(b.popular[:4])


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"items": [f"i{n}" for n in range(51)]}, 422, "body.items: at most 50 items (SEQREC_MAX_HISTORY)"),
        ({"items": ["a", "b"], "times": [1.0]}, 422, "body: Value error, times: one time per item"),
        ({"items": ["a"], "times": [True]}, 422, "body.times.0: Input should be a valid number"),
        ({"items": ["a"], "times": [-1]}, 422, "body.times.0: Input should be greater than or equal to 0"),
        ({"items": ["a/b"]}, 422, "body.items.0: Value error, id must not contain '/'"),
        ({"items": ["a"], "filter": "price <"}, 422, "body.filter: filter: expected a value"),
        ({"items": ["a"], "k": 0}, 422, "body.k:"),
        ({"items": ["a"], "model": "nope"}, 422, "unknown model; serving: sasrec, tiny-sasrec"),
        ({"items": ["a"], "rule": "nope"}, 422, "rule: unknown rule; defined: none"),
        ({"items": ["a"], "user_id": "u"}, 422, "body.user_id: Extra inputs are not permitted"),
        ({}, 422, "body.items: Field required"),
    ],
)
def test_bad_requests_get_their_documented_answer(
    client: TestClient, body: dict[str, Any], status: int, detail: str
) -> None:
    if "filter" in body:  # a filter is checked against the catalogue's attributes
        client.put("/catalog/items/x", json={"price": 1}, headers=KEY)
    r = client.post("/recommend", json=body)
    assert r.status_code == status and r.json()["detail"].startswith(detail), r.text
    assert client.post("/recommend", content=b"{", headers={"content-type": "application/json"}).status_code == 400


def test_the_route_is_documented(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/recommend"]["post"]
    assert {"200", "400", "413", "422"} <= set(op["responses"])
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/SequenceIn")


def test_a_bundle_that_reads_times_gets_the_sent_times(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """The toy model's answer depends on the newest gap (tests/support/timed.py): equal answers mean
    the sent times reached the encoder as the stored ones do."""
    from tests.support.data import synthetic_seqdata
    from tests.support.timed import register_toy, toy_bundle

    register_toy(monkeypatch)
    data = synthetic_seqdata(num_users=60)
    path, _ = toy_bundle(data, tmp_path)
    items = data.item_ids[:6]
    times = [1_700_000_000.0 + t for t in (0, 40, 100, 3_700, 3_760, 3_900)]
    settings = Settings(bundles=[path], api_key="k3y", redis_url=redis_url, key_prefix=key_prefix)
    with TestClient(create_app(settings)) as c:
        store(c, "timed", items, times)
        stored = c.get("/recommend/timed", params={"k": 5}).json()
        sent = c.post("/recommend", json={"items": items[::-1], "times": times[::-1], "k": 5}).json()
        assert sent == without_user(stored)
        other_gap = c.post("/recommend", json={"items": items, "times": [*times[:-1], times[-1] + 9_000], "k": 5})
        assert [x["score"] for x in other_gap.json()["items"]] != [x["score"] for x in sent["items"]]
