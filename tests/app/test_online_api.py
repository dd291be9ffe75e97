"""Online evaluation and the A/B split through the ASGI app (memory and Redis stores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.schemas import RecommendOut
from app.main import create_app
from app.serving.experiment import ExperimentError
from app.settings import Settings
from tests.support.procs import free_port

KEY = {"X-API-Key": "k3y"}


@pytest.fixture(scope="module")
def second_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export_bundle

    return export_bundle(tiny_run / "best.pt", tmp_path_factory.mktemp("svc-b"), name="tiny-b")


@pytest.fixture(params=["memory", "redis"])
def store_kw(request: pytest.FixtureRequest, key_prefix: str) -> dict:
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url"), "key_prefix": key_prefix}
    return {}


def drain(c: TestClient) -> None:
    c.portal.call(c.app.state.seqrec.live.drain)  # type: ignore[union-attr]


def post(c: TestClient, user: str, item: str, ts: float) -> None:
    r = c.post("/events", json={"events": [{"user_id": user, "item_id": item, "timestamp": ts}]}, headers=KEY)
    assert r.status_code == 200, r.text


def test_served_lists_are_scored_per_variant(bundle_path: Path, second_bundle: Path, store_kw: dict) -> None:
    exp = "control=tiny-sasrec:50,treatment=tiny-b:50"
    settings = Settings(bundles=[bundle_path, second_bundle], api_key="k3y", experiment=exp, **store_kw)
    with TestClient(create_app(settings)) as c:
        known = c.app.state.seqrec.registry.get(None).item_ids
        post(c, "never-served", known[0], 1.0)  # no list before it: unserved, not a miss
        hits: dict[str, int] = {}
        variants: dict[str, str] = {}
        for n in range(40):
            user = f"user-{n}"
            post(c, user, known[n], 10.0)
            body = c.get(f"/recommend/{user}", params={"k": 20}).json()
            RecommendOut.model_validate(body)
            variants[user] = body["variant"]
            drain(c)
            served = [x["item_id"] for x in body["items"]]
            nxt = served[n % 10] if n % 2 else known[-1 - n]  # odd users click rank n%10 + 1
            hits[body["variant"]] = hits.get(body["variant"], 0) + int(nxt in served[:10])
            post(c, user, nxt, 20.0)
        explicit = c.get("/recommend/user-0", params={"model": "tiny-b"}).json()
        assert explicit["variant"] == "explicit"
        drain(c)
        stats = c.get("/stats/online", params={"minutes": 5}).json()
        metrics = c.get("/metrics").text
    assert set(variants.values()) == {"control", "treatment"}
    assert stats["unserved_events"] == 41 and stats["experiment"] == exp and stats["k"] == 10
    rows = {(r["bundle"], r["variant"]): r for r in stats["variants"]}
    assert set(rows) == {("tiny-sasrec", "control"), ("tiny-b", "treatment"), ("tiny-b", "explicit")}
    for (_, v), r in rows.items():
        if v == "explicit":
            assert (r["served"], r["scored"]) == (1, 0)
            continue
        n_v = sum(1 for x in variants.values() if x == v)
        assert r["served"] == r["scored"] == n_v
        assert r["hits"] == hits[v] and r["hit_rate"] == pytest.approx(hits[v] / n_v)
        lo, hi = r["hit_rate_ci95"]
        assert lo <= r["hit_rate"] <= hi
        assert 0 < r["coverage"] <= 1 and r["distinct_items"] >= 20
    assert 'seqrec_online_scored_total{bundle="tiny-b",variant="treatment"}' in metrics
    online = [line for line in metrics.splitlines() if line.startswith("seqrec_online_")]
    assert online and not any("user" in line for line in online)  # never a per-user label


def test_assignment_is_sticky(bundle_path: Path, second_bundle: Path) -> None:
    settings = Settings(bundles=[bundle_path, second_bundle], experiment="a=tiny-sasrec:50,b=tiny-b:50")
    with TestClient(create_app(settings)) as c:
        first = [c.get(f"/recommend/u{i}").json() for i in range(30)]
        again = [c.get(f"/recommend/u{i}").json() for i in range(30)]
    assert [(x["variant"], x["bundle"]) for x in first] == [(x["variant"], x["bundle"]) for x in again]
    assert {(x["variant"], x["bundle"]) for x in first} == {("a", "tiny-sasrec"), ("b", "tiny-b")}


def test_bad_experiment_refused_at_startup(bundle_path: Path) -> None:
    app = create_app(Settings(bundles=[bundle_path], experiment="a=tiny-sasrec:50,b=nope:50"))
    with pytest.raises(ExperimentError, match="variant 2: its bundle is not served"), TestClient(app):
        pass


def test_reload_changes_the_split_and_refuses_bad_ones(bundle_path: Path, second_bundle: Path) -> None:
    paths = [str(bundle_path), str(second_bundle)]
    with TestClient(create_app(Settings(bundles=[bundle_path], api_key="k3y"))) as c:
        assert c.get("/recommend/u1").json()["variant"] == "default"
        for bad, msg in [
            ("a=tiny-sasrec:50,b=nope:50", "variant 2: its bundle is not served"),
            ("a=tiny-sasrec:60,b=tiny-b:50", "sum to 110"),
            ("a=tiny-sasrec:50,a=tiny-b:50", "variant 2: the variant name is used twice"),
        ]:
            r = c.post("/admin/reload", json={"bundles": paths, "experiment": bad}, headers=KEY)
            assert r.status_code == 422 and msg in r.json()["detail"], r.text
            assert c.get("/recommend/u1").json()["variant"] == "default"  # the old configuration serves
            assert list(c.app.state.seqrec.registry.bundles) == ["tiny-sasrec"]
        good = "a=tiny-sasrec:1,b=tiny-b:99"
        r = c.post("/admin/reload", json={"bundles": paths, "experiment": good}, headers=KEY)
        assert r.status_code == 200 and r.json()["experiment"] == good
        assert {c.get(f"/recommend/u{i}").json()["variant"] for i in range(20)} >= {"b"}
        # A reload without the treatment's bundle would orphan the running experiment: refused.
        r = c.post("/admin/reload", json={"bundles": [str(bundle_path)]}, headers=KEY)
        assert r.status_code == 422 and "tiny-b" in r.json()["detail"]
        r = c.post("/admin/reload", json={"bundles": [str(bundle_path)], "experiment": ""}, headers=KEY)
        assert r.status_code == 200 and r.json()["experiment"] is None
        assert c.get("/recommend/u1").json()["variant"] == "default"


def test_tracking_with_redis_down_never_fails_a_request(bundle_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with TestClient(create_app(Settings(bundles=[bundle_path], redis_url=url, redis_timeout=0.05))) as c:
        r = c.get("/recommend/u1")
        assert r.status_code == 200 and r.json()["fallback"] == "store_unavailable"
        drain(c)
        assert c.get("/stats/online").status_code == 503
        metrics = c.get("/metrics").text
    assert 'seqrec_online_skipped_total{op="served"} 1.0' in metrics


def test_refused_experiments_never_echo_the_submitted_text(bundle_path: Path, second_bundle: Path) -> None:
    """A reload's experiment is client input: its refusal names the variant by position and the
    served bundles, never the text; the running experiment keeps serving."""
    paths = [str(bundle_path), str(second_bundle)]
    running = "a=tiny-sasrec:50,b=tiny-b:50"
    marker = "zq9MARKERq9z"
    bad = [
        f"a=tiny-sasrec:50,b={marker}:50",  # an unknown bundle
        f"a=tiny-sasrec:50,b=tiny-b:{marker}",  # a weight that is not a number
        f"a=tiny-sasrec:50,{marker}",  # not name=bundle:weight
        f"{marker}!=tiny-sasrec:100",  # a bad variant name
        f"a=tiny-sasrec:{marker}inf",
        "a=tiny-sasrec:50," + ",".join(f"v{i}={marker}:0" for i in range(600)),  # ~10 kB
        f"a=tiny-sasrec:50,b=tiny-b:50,{marker}=tiny-b:1",
    ]
    with TestClient(create_app(Settings(bundles=paths, api_key="k3y", experiment=running))) as c:
        for spec in bad:
            r = c.post("/admin/reload", json={"bundles": paths, "experiment": spec}, headers=KEY)
            assert r.status_code == 422, r.text
            assert marker not in r.text and len(r.text) < 600, r.text[:300]
        assert c.get("/recommend/u1").json()["variant"] in {"a", "b"}
        r = c.post("/admin/reload", json={"bundles": paths, "default_model": marker}, headers=KEY)
        assert r.status_code == 422 and marker not in r.text


def test_a_model_kind_that_several_bundles_share(bundle_path: Path, second_bundle: Path) -> None:
    """Two SASRec bundles: the kind names the default bundle; the 422 of an unknown name lists
    exactly the accepted names, and every listed name is accepted."""
    with TestClient(create_app(Settings(bundles=[bundle_path, second_bundle], api_key="k3y"))) as c:
        assert c.get("/recommend/u1", params={"model": "sasrec"}).json()["bundle"] == "tiny-sasrec"
        r = c.get("/recommend/u1", params={"model": "nope"})
        assert r.status_code == 422 and r.json()["detail"] == "unknown model; serving: sasrec, tiny-b, tiny-sasrec"
        for name in ("sasrec", "tiny-b", "tiny-sasrec"):
            assert c.get("/recommend/u1", params={"model": name}).status_code == 200
            assert c.get("/items/1/similar", params={"model": name}).status_code in (200, 404)
        # A reload may name the default by kind too.
        r = c.post("/admin/reload", json={"default_model": "sasrec"}, headers=KEY)
        assert r.status_code == 200 and r.json()["default_model"] == "tiny-sasrec"


def test_unknown_items_are_counted_against_the_users_variant(bundle_path: Path, second_bundle: Path) -> None:
    """POST /events counts an item as unknown by the bundle that will answer the user (their A/B
    variant's), not by the default bundle."""
    settings = Settings(bundles=[bundle_path, second_bundle], api_key="k3y", experiment="a=tiny-sasrec:50,b=tiny-b:50")
    with TestClient(create_app(settings)) as c:
        state = c.app.state.seqrec
        item = next(iter(state.registry.bundles["tiny-b"].index_of))
        del state.registry.bundles["tiny-b"].index_of[item]  # known to the default bundle only
        users = {v: next(f"u{i}" for i in range(1000) if state.experiment.assign(f"u{i}").name == v) for v in "ab"}
        for variant, expected in (("a", 0), ("b", 1)):
            ev = {"user_id": users[variant], "item_id": item, "timestamp": 1_700_000_000}
            r = c.post("/events", json={"events": [ev]}, headers=KEY)
            assert r.status_code == 200 and r.json()["unknown_to_model"] == expected, (variant, r.json())
