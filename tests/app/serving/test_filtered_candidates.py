"""Filtered reads answered from the user's cached candidates (app/serving/recommend.py,
`candidates_depth`): a plain list computed for the cache keeps the user's unfiltered top candidates,
and a read of the same history with a filter, `exclude=` or a changed catalogue takes the top k of
those the rules keep now. Every answer here is checked against a server without the user cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving import recommend as pipeline
from app.serving.catalog import Limits, Rules, from_candidates
from app.settings import Settings
from tests.support.parity import PATIENT_STORE, cache_outcomes
from tests.support.procs import wait_for

KEY = {"X-API-Key": "k"}
MAX = 20  # SEQREC_MAX_HISTORY of these apps
K = 3
DEPTH = 8 * K  # with CANDIDATES_MIN lowered below it: 24 of the tiny bundle's 120 items are cached


@pytest.fixture
def apps(
    bundle_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, TestClient]]:
    # Fewer candidates than the catalogue holds, so that some rules leave fewer than k of them.
    monkeypatch.setattr(pipeline, "CANDIDATES_MIN", 16)
    common: dict[str, Any] = {
        "bundles": [bundle_path],
        "api_key": "k",
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "max_history": MAX,
        **PATIENT_STORE,
        "catalog_poll_s": 0.02,
    }
    with (
        TestClient(create_app(Settings(**common))) as on,
        TestClient(create_app(Settings(**common, user_cache=False, fast_reads=False))) as off,
    ):
        yield on, off


def _ids(body: dict[str, Any]) -> list[str]:
    return [x["item_id"] for x in body["items"]]


def _catalogue(on: TestClient, off: TestClient, rows: list[dict[str, Any]]) -> None:
    """Write through one app; wait until the other follows (both read the same Redis)."""
    r = on.post("/catalog/items", json={"items": rows}, headers=KEY)
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    wait_for(lambda: off.get("/catalog").json()["version"] >= version, 5, "the other app to follow the catalogue")


def _patch(on: TestClient, off: TestClient, item: str, change: dict[str, Any]) -> None:
    r = on.patch(f"/catalog/items/{item}", json=change, headers=KEY)
    assert r.status_code == 200, r.text
    version = on.get("/catalog").json()["version"]
    wait_for(lambda: off.get("/catalog").json()["version"] >= version, 5, "the other app to follow the catalogue")


def test_filtered_reads_from_cached_candidates_equal_the_uncached_answer(apps: tuple[TestClient, TestClient]) -> None:
    on, off = apps
    b = on.app.state.seqrec.registry.get(None)  # type: ignore[attr-defined]
    ids = b.item_ids
    cache = on.app.state.seqrec.user_cache  # type: ignore[attr-defined]

    def read(params: list[tuple[str, str]] | dict[str, Any]) -> dict[str, Any]:
        """The cached server's answer, checked against the uncached one."""
        got = on.get("/recommend/u", params=params)
        want = off.get("/recommend/u", params=params)
        assert got.status_code == want.status_code == 200, (got.text, want.text)
        g, w = got.json(), want.json()
        on.portal.call(cache.drain)
        assert _ids(g) == _ids(w), params
        np.testing.assert_allclose([x["score"] for x in g["items"]], [x["score"] for x in w["items"]], atol=1e-5)
        assert (g["source"], g["history_length"]) == (w["source"], w["history_length"]) == ("model", MAX)
        assert (g.get("filtered"), g.get("rules")) == (w.get("filtered"), w.get("rules")), params
        return g

    def counts() -> tuple[float, float]:
        """(answers from a cached list, user vectors computed or reused)."""
        got = cache_outcomes(on)
        return got.get("list", 0.0), got.get("hit", 0.0) + got.get("miss", 0.0)

    evs = [{"user_id": "u", "item_id": ids[n], "timestamp": 100 + n, "event_id": f"e{n}"} for n in range(MAX)]
    assert on.post("/events", json={"events": evs}, headers=KEY).status_code == 200
    # Every item in the catalogue: price n, category by n mod 3.
    cats = ["shoes", "bags", "hats"]
    rows = [{"item_id": i, "price": n, "category": cats[n % 3]} for n, i in enumerate(ids)]
    _catalogue(on, off, rows)
    first = read({"k": K})  # computed: the user's top DEPTH candidates are stored with the vector
    top = _ids(off.get("/recommend/u", params={"k": DEPTH}).json())  # what the cache holds, in order
    assert _ids(first) == top[:K]

    # Filters that keep k of the candidates: answered from them, no vector read or computed.
    for flt in ("price < 60", 'category = "bags"', 'category != "hats" and price >= 30'):
        lists, vectors = counts()
        read({"k": K, "filter": flt})
        assert counts() == (lists + 1, vectors), flt
    # exclude= (the route, not the pre-routed path), alone and with a filter.
    lists, vectors = counts()
    read([("k", str(K)), ("exclude", top[0]), ("exclude", top[2])])
    read([("k", str(K)), ("exclude", top[1]), ("filter", "price < 60")])
    assert counts() == (lists + 2, vectors)

    # A rule that keeps most of the catalogue but fewer than k of the candidates: the list is read,
    # found short, and the answer computed from the history (the vector is reused).
    few = set(top[-2:])
    _catalogue(on, off, [{**r, "bucket": 0 if r["item_id"] in few or r["item_id"] not in top else 1} for r in rows])
    lists, vectors = counts()
    got = read({"k": K, "filter": "bucket = 0"})
    assert counts() == (lists + 1, vectors + 1)
    assert set(_ids(got)[:2]) == few  # the two survivors first, then the best item beyond the candidates
    lists, vectors = counts()
    read({"k": K})  # the candidates computed meanwhile were stored again: a list answer
    assert counts() == (lists + 1, vectors)
    # A rule too selective to expect k survivors: the history is read at once, never the list.
    lists, vectors = counts()
    read({"k": K, "filter": "price >= 40 and price <= 44"})
    assert counts() == (lists, vectors + 1)
    # k beyond the cached candidates: computed, and stored deeper (then a list answer again).
    lists, vectors = counts()
    read({"k": DEPTH + 1, "filter": "price < 60"})
    read({"k": DEPTH + 1, "filter": "price < 60"})
    assert counts() == (lists + 1, vectors + 1)

    # An item made unavailable between two reads of the same history: never served, the rest in order.
    gone = _ids(read({"k": K}))[0]
    _patch(on, off, gone, {"available": False})
    lists, vectors = counts()
    after = read({"k": K})
    assert gone not in _ids(after) and _ids(after) == [i for i in top if i != gone][:K]
    read({"k": K, "filter": "price < 60"})
    assert counts() == (lists + 2, vectors)
    read({"k": K, "include_unavailable": "true"})
    _patch(on, off, gone, {"available": True})
    assert _ids(read({"k": K}))[0] == gone


def test_which_rules_the_candidates_answer() -> None:
    size, k, depth = 1000, 10, 200
    mask = np.ones(size + 1, bool)
    exact, approximate = True, False

    def rules(eligible: int) -> Rules:
        return Rules(mask=mask, eligible=eligible)

    assert from_candidates(Rules(exclude=np.array([3])), k, depth, size, approximate)  # exclusions alone
    assert from_candidates(rules(600), k, depth, size, approximate)  # most of the catalogue: about 120 survive
    assert from_candidates(rules(100), k, depth, size, exact)  # about 20 survive, and exact scores rank alike
    assert not from_candidates(rules(100), k, depth, size, approximate)  # the full ranking scores them exactly
    assert not from_candidates(rules(99), k, depth, size, exact)  # fewer than 2k expected to survive
    assert from_candidates(rules(30_000), k, depth, 100_000, approximate, Limits(exact_max=20_000))
    assert pipeline.candidates_depth(10) == max(pipeline.CANDIDATES_MIN, 80)
    assert pipeline.candidates_depth(100) == 800
    assert pipeline.candidates_depth(1000) == max(pipeline.CANDIDATES_MAX, 1000)


def test_an_exact_top_k_is_the_prefix_of_every_deeper_one_even_with_equal_scores() -> None:
    """Items with equal vectors (a text bundle's equal titles) tie: they come in label order, at the
    cut too, so the cached candidates' prefix is the list a shallower search gives."""
    from app.bundles.index import ExactIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    vectors[100:140] = vectors[7]  # 41 items with one vector: ties straddle every cut below
    index = ExactIndex(np.arange(1, 301), vectors)
    query = (vectors[7] + 0.01 * rng.standard_normal(8)).astype(np.float32)[None, :]
    away = [np.array([5, 120, 250])]
    deep, deep_scores = index.search(query, 200, away)
    for k in (1, 3, 10, 30, 60):
        labels, scores = index.search(query, k, away)
        assert labels[0].tolist() == deep[0][:k].tolist(), k
        np.testing.assert_array_equal(scores[0], deep_scores[0][:k])
    tied = deep[0][np.isclose(deep_scores[0], deep_scores[0][0])]
    assert tied.tolist() == sorted(tied.tolist()) and len(tied) == 40  # 8 and 101..140, 120 away
