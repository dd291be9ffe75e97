"""Online evaluation and the A/B split through the ASGI app (memory and Redis stores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

    return export_bundle(tiny_run / "best.pt", tmp_path_factory.mktemp("svc-b"), name="tiny-b", program=False)


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
            # No drain here: an event's look waits for the list writes in flight when it arrived.
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


def test_experiment_statistics_are_per_user_and_restart_with_a_new_experiment(
    bundle_path: Path, second_bundle: Path, store_kw: dict
) -> None:
    """GET /stats/online's `experiment_test`: per variant the users, lists and scored events the
    client produced, hit rates equal to the client's, intervals around them, the difference of
    the second variant against the first; ?model= answers stay out; a new split starts afresh."""
    exp = "control=tiny-sasrec:50,treatment=tiny-b:50"
    settings = Settings(
        bundles=[bundle_path, second_bundle], api_key="k3y", experiment=exp, online_test_min_users=2, **store_kw
    )
    with TestClient(create_app(settings)) as c:
        known = c.app.state.seqrec.registry.get(None).item_ids
        seen: dict[str, dict[str, Any]] = {}
        for n in range(24):
            user = f"u-{n}"
            for step in range(3 + n % 4):  # several events per user, a different number each
                body = c.get(f"/recommend/{user}").json()
                served = [x["item_id"] for x in body["items"]]
                nxt = served[(n + step) % 10] if (n + step) % 3 else known[-1 - n]
                post(c, user, nxt, 100.0 + step)
                s = seen.setdefault(body["variant"], {"users": set(), "events": 0, "hits": 0})
                s["users"].add(user)
                s["events"] += 1
                s["hits"] += nxt in served
        c.get("/recommend/u-0", params={"model": "tiny-b"})  # explicit: not part of the experiment
        drain(c)
        stats = c.get("/stats/online", params={"minutes": 5}).json()
        test = stats["experiment_test"]
        assert test["experiment"] == exp and test["started_at"] is not None and test["min_users"] == 2
        arms = {a["variant"]: a for a in test["variants"]}
        rows = {r["variant"]: r for r in stats["variants"]}
        assert set(arms) == set(seen) == {"control", "treatment"}
        for v, s in seen.items():
            a = arms[v]
            assert a["users"] == a["users_served"] == len(s["users"]) == rows[v]["users"]
            assert a["served"] == a["scored"] == s["events"]
            assert a["hit_rate"] == pytest.approx(s["hits"] / s["events"]) == pytest.approx(rows[v]["hit_rate"])
            for m in ("hit_rate", "ndcg", "mrr"):
                lo, hi = a[f"{m}_ci95"]
                assert lo <= a[m] <= hi
        (cmp,) = test["comparisons"]
        assert (cmp["variant"], cmp["against"], cmp["metric"]) == ("treatment", "control", "hit_rate")
        assert cmp["difference"] == pytest.approx(arms["treatment"]["hit_rate"] - arms["control"]["hit_rate"])
        lo, hi = cmp["difference_ci95"]
        assert lo < cmp["difference"] < hi and 0 <= cmp["p_value"] <= 1
        assert cmp["verdict"] in {"treatment better", "control better", "no difference yet"}
        # A new split (other weights) is a new experiment: its statistics start from nothing.
        paths = [str(bundle_path), str(second_bundle)]
        new = "control=tiny-sasrec:40,treatment=tiny-b:60"
        assert c.post("/admin/reload", json={"bundles": paths, "experiment": new}, headers=KEY).status_code == 200
        after = c.get("/stats/online", params={"minutes": 5}).json()["experiment_test"]
        assert after["experiment"] == new and after["scope"] != test["scope"] and after["started_at"] is None
        assert all(a["users"] == 0 and a["scored"] == 0 and a["hit_rate"] is None for a in after["variants"])
        assert after["comparisons"][0]["verdict"] == "no difference yet"
    assert "experiment_test" in c.app.openapi()["components"]["schemas"]["OnlineStatsOut"]["properties"]


def test_no_experiment_no_experiment_test(bundle_path: Path) -> None:
    with TestClient(create_app(Settings(bundles=[bundle_path], api_key="k3y"))) as c:
        c.get("/recommend/u1")
        post(c, "u1", c.app.state.seqrec.registry.get(None).item_ids[0], 5.0)
        drain(c)
        stats = c.get("/stats/online").json()
    assert stats["experiment_test"] is None
    assert [(r["variant"], r["served"], r["scored"], r["users"]) for r in stats["variants"]] == [("default", 1, 1, 1)]


def drive_experiment(c: TestClient, users: int, good: str) -> None:
    """`users` users, 3 events each: the `good` variant's users click a listed item 4 times in 5,
    the other's once in 5 (a difference the sequential test decides on with these few users)."""
    known = c.app.state.seqrec.registry.get(None).item_ids
    for n in range(users):
        user = f"p-{n}"
        for step in range(3):
            body = c.get(f"/recommend/{user}").json()
            served = [x["item_id"] for x in body["items"]]
            click = (n + step) % 5 != 0 if body["variant"] == good else (n + step) % 5 == 0
            nxt = served[(n + step) % 10] if click else next(i for i in reversed(known) if i not in served)
            post(c, user, nxt, 100.0 + step)
    drain(c)


def promoting(bundle_path: Path, second_bundle: Path, **kw: Any) -> Settings:
    exp = "control=tiny-sasrec:50,treatment=tiny-b:50"
    kw = {"online_test_min_users": 5, "online_promote_max_p99_ratio": 100.0, **kw}
    # The policy's own loop waits an hour here: the test reads the decision itself (promote_once).
    return Settings(
        bundles=[bundle_path, second_bundle],
        api_key="k3y",
        experiment=exp,
        online_promote=True,
        online_promote_check_s=3600,
        **kw,
    )


def test_promotion_makes_a_winning_treatment_the_default_everywhere(bundle_path: Path, second_bundle: Path) -> None:
    from app.api.routes.stats import promote_once

    with TestClient(create_app(promoting(bundle_path, second_bundle))) as c:
        state = c.app.state.seqrec
        assert c.get("/stats/promotions").json()["decisions"] == []
        drive_experiment(c, 60, good="treatment")
        cmp = c.get("/stats/online").json()["experiment_test"]["comparisons"][0]
        assert cmp["verdict"] == "treatment better", cmp
        decision = c.portal.call(promote_once, state)
        assert decision is not None and decision["action"] == "promote" and decision["bundle"] == "tiny-b"
        assert state.experiment is None and state.registry.default == "tiny-b"
        assert state.items.spec["default_model"] == "tiny-b" and state.items.spec["experiment"] == ""
        body = c.get("/recommend/p-1").json()
        assert (body["bundle"], body["variant"]) == ("tiny-b", "default")
        got = c.get("/stats/promotions").json()
        assert got["enabled"] is True and [d["action"] for d in got["decisions"]] == ["promote"]
        d = got["decisions"][0]
        assert d["generation"] == decision["generation"] and d["difference"] > 0 and d["p_value"] <= 0.05
        assert set(d["guardrails"]) == {
            "error_rate",
            "p99_s_control",
            "p99_s_treatment",
            "coverage_control",
            "coverage_treatment",
        }
        assert d["guardrails"]["error_rate"] == 0.0 and d["guardrails"]["coverage_treatment"] > 0
        assert c.portal.call(promote_once, state) is None  # the experiment is over: nothing left to decide


def test_promotion_withdraws_a_losing_treatment(bundle_path: Path, second_bundle: Path) -> None:
    from app.api.routes.stats import promote_once

    with TestClient(create_app(promoting(bundle_path, second_bundle))) as c:
        state = c.app.state.seqrec
        drive_experiment(c, 60, good="control")
        decision = c.portal.call(promote_once, state)
        assert decision is not None and decision["action"] == "withdraw" and decision["reason"] == "control better"
        assert state.experiment is None and state.registry.default == "tiny-sasrec"
        assert c.get("/recommend/p-1").json()["bundle"] == "tiny-sasrec"


def test_a_failing_guardrail_holds_the_treatment_and_is_recorded_once(bundle_path: Path, second_bundle: Path) -> None:
    from app.api.routes.stats import promote_once

    settings = promoting(bundle_path, second_bundle, online_promote_min_coverage_ratio=100.0)
    with TestClient(create_app(settings)) as c:
        state = c.app.state.seqrec
        drive_experiment(c, 60, good="treatment")
        decision = c.portal.call(promote_once, state)
        assert decision is not None and decision["action"] == "hold" and "coverage" in decision["reason"]
        assert c.portal.call(promote_once, state) is None  # the same hold is not recorded again
        assert state.experiment is not None and state.registry.default == "tiny-sasrec"  # nothing changed
        assert [d["action"] for d in c.get("/stats/promotions").json()["decisions"]] == ["hold"]


def test_promotion_is_off_by_default(bundle_path: Path) -> None:
    assert Settings(bundles=[bundle_path]).online_promote is False
