"""Cached user vectors (app/serving/usercache.py): the cached answer is the full recompute's, always.

Parity runs on 1,000 real ML-1M histories (the last 200 events of the first 1,000 users) per
model kind, through the HTTP API, against an app with the cache off reading the same Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.usercache import history_digest
from app.settings import Settings
from tests.app.serving.test_items import unisrec_bundle  # noqa: F401 - the tiny UniSRec bundle fixture
from tests.support.asgi import Request, get_json
from tests.support.parity import PATIENT_STORE, cache_outcomes

KEY = {"X-API-Key": "k"}
TINY = {
    "sasrec": ({"max_len": 50, "dim": 16, "num_layers": 1}, {}),
    "bert4rec": ({"max_len": 50, "dim": 16, "num_layers": 1}, {}),
    "gru4rec": ({"dim": 16}, {"extra": {"parallel": "padded"}}),
}
USERS = 1000
HISTORY = 200


@pytest.fixture(scope="module")
def ml1m_bundles(ml1m, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.export import export_bundle
    from training.train import train

    art = tmp_path_factory.mktemp("cache-bundles")
    out = {}
    for kind, (model_over, extra) in TINY.items():
        run = tmp_path_factory.mktemp(f"cache-run-{kind}")
        over = {"epochs": 1, "batch_size": 128, "max_users": 300, **extra}
        train(kind, ml1m, run, model_overrides=model_over, train_overrides=over, progress=False)
        out[kind] = export_bundle(run / "best.pt", art, name=f"ml1m-{kind}", program=False)
    return out


def _events(ml1m, users: range) -> list[dict]:
    out = []
    for u in users:
        seq = ml1m.sequence(u)[-HISTORY:]
        out += [
            {"user_id": f"u{u}", "item_id": ml1m.item_ids[i - 1], "timestamp": 1000 + n, "event_id": f"e{n}"}
            for n, i in enumerate(seq.tolist())
        ]
    return out


def _post(client: TestClient, events: list[dict]) -> None:
    for s in range(0, len(events), 1000):
        r = client.post("/events", json={"events": events[s : s + 1000]}, headers=KEY)
        assert r.status_code == 200, r.text


def _same(a: dict, b: dict) -> None:
    assert [x["item_id"] for x in a["items"]] == [x["item_id"] for x in b["items"]]
    np.testing.assert_allclose([x["score"] for x in a["items"]], [x["score"] for x in b["items"]], atol=1e-5)
    assert a["source"] == b["source"] and a["history_length"] == b["history_length"]


def _hits(client: TestClient) -> float:
    """Reads answered without encoding the history: a cached vector or a whole cached list."""
    text = client.get("/metrics").text
    heads = ('seqrec_user_cache_total{outcome="hit"}', 'seqrec_user_cache_total{outcome="list"}')
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(heads))


@pytest.fixture
def two_apps(ml1m_bundles: dict[str, Path], redis_url: str, key_prefix: str) -> Iterator[tuple[TestClient, TestClient]]:
    paths = list(ml1m_bundles.values())
    common = {"bundles": paths, "api_key": "k", "redis_url": redis_url, "key_prefix": key_prefix, **PATIENT_STORE}
    with (
        TestClient(create_app(Settings(**common, user_cache=True))) as on,
        TestClient(create_app(Settings(**common, user_cache=False))) as off,
    ):
        yield on, off


def _check_parity(on: TestClient, off: TestClient, kind: str, events: list[dict], users: list[str]) -> None:
    cache = on.app.state.seqrec.user_cache
    _post(on, events)
    asked: list[Request] = [(f"/recommend/{u}", {"model": kind, "k": 20}) for u in users]
    first = dict(zip(users, get_json(on, asked), strict=True))
    on.portal.call(cache.drain)  # every miss's entry is stored
    hits0 = _hits(on)
    for u, cached, full in zip(users, get_json(on, asked), get_json(off, asked), strict=True):
        assert cached["source"] == "model"
        _same(cached, full)
        _same(cached, first[u])
    assert _hits(on) - hits0 == len(users)  # the second reads really came from the cache

    # A new event changes the history: the next read recomputes and matches the cache-off app.
    bundle = on.app.state.seqrec.registry.get(kind)
    new = [{"user_id": u, "item_id": bundle.item_ids[n % 50], "timestamp": 5000} for n, u in enumerate(users[:200])]
    _post(off, new)  # written through the other app: the cache must still see it
    hits1 = _hits(on)
    for u, after, full in zip(users[:200], get_json(on, asked[:200]), get_json(off, asked[:200]), strict=True):
        _same(after, full)
        assert after["history_length"] == min(first[u]["history_length"] + 1, HISTORY)  # the new event is in
    assert _hits(on) == hits1  # none of them was served from the stale entry


@pytest.mark.parametrize("kind", list(TINY))
def test_cached_answer_equals_full_recompute_on_1000_real_histories(kind: str, ml1m, two_apps) -> None:
    _check_parity(*two_apps, kind, _events(ml1m, range(USERS)), [f"u{u}" for u in range(USERS)])


def test_unisrec_cached_answer_equals_full_recompute_on_1000_real_histories(
    ml100k, request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> None:
    """ML-100K has 943 users: their histories, plus 57 of them without their last event."""
    bundle = request.getfixturevalue("unisrec_bundle")  # the tiny UniSRec bundle of tests/app/serving/test_items.py
    common = {"bundles": [bundle], "api_key": "k", "redis_url": redis_url, "key_prefix": key_prefix, **PATIENT_STORE}
    events = _events(ml100k, range(ml100k.num_users))
    users = [f"u{u}" for u in range(ml100k.num_users)]
    for u in range(USERS - ml100k.num_users):
        seq = ml100k.sequence(u)[:-1][-HISTORY:]
        events += [
            {"user_id": f"p{u}", "item_id": ml100k.item_ids[i - 1], "timestamp": 1000 + n, "event_id": f"e{n}"}
            for n, i in enumerate(seq.tolist())
        ]
        users.append(f"p{u}")
    assert len(users) == USERS
    with (
        TestClient(create_app(Settings(**common, user_cache=True))) as on,
        TestClient(create_app(Settings(**common, user_cache=False))) as off,
    ):
        _check_parity(on, off, "unisrec", events, users)


def test_digest_covers_what_is_encoded_and_the_bundle(ml1m_bundles: dict[str, Path]) -> None:
    from app.bundles.bundle import Bundle

    a = Bundle.load(ml1m_bundles["sasrec"])
    b = Bundle.load(ml1m_bundles["bert4rec"])
    seq = np.arange(1, 121, dtype=np.int64)
    d = history_digest(a, seq)
    assert d is not None and d == history_digest(a, seq.copy())
    older = seq.copy()
    older[0] = 7  # outside the last max_len = 50: the encoder never sees it
    assert history_digest(a, older) == d
    newer = seq.copy()
    newer[-1] = 7
    assert history_digest(a, newer) != d
    assert history_digest(b, seq) != d  # another bundle, same indices
    assert history_digest(a, np.array([a.manifest.num_items + 1])) is None  # online item: not cached


def test_cache_entry_or_write_failure_never_fails_the_request(
    bundle_path: Path, redis_url: str, key_prefix: str
) -> None:
    import redis
    from redis.asyncio import Redis

    settings = Settings(bundles=[bundle_path], api_key="k", redis_url=redis_url, key_prefix=key_prefix)
    with TestClient(create_app(settings)) as client:
        b = client.app.state.seqrec.registry.get(None)
        events = [{"user_id": "w", "item_id": i, "timestamp": 10 + n} for n, i in enumerate(b.item_ids[:20])]
        _post(client, events)
        # The entry's key holds a hash: GET fails with WRONGTYPE (a real Redis error), which is a miss.
        redis.Redis.from_url(redis_url).hset(f"{key_prefix}v:w:{b.name}", "x", "y")
        r = client.get("/recommend/w")
        assert r.status_code == 200 and r.json()["source"] == "model"
        cache = client.app.state.seqrec.user_cache
        client.portal.call(cache.drain)
        assert 'seqrec_user_cache_total{outcome="miss"} 1.0' in client.get("/metrics").text
        # Writes to a Redis that refuses connections: counted, never a failed answer.
        dead = Redis.from_url("redis://127.0.0.1:1/0")

        async def refused(user_id: str) -> Redis:
            return dead

        cache.backend._write_client = refused
        redis.Redis.from_url(redis_url).delete(f"{key_prefix}v:w:{b.name}")
        for _ in range(3):
            r = client.get("/recommend/w")
            assert r.status_code == 200 and r.json()["source"] == "model"
            client.portal.call(cache.drain)
        assert 'seqrec_user_cache_total{outcome="write_error"} 3.0' in client.get("/metrics").text


def test_gru4rec_state_advanced_per_event_equals_full_recompute_on_1000_real_histories(
    ml1m, ml1m_bundles: dict[str, Path], redis_url: str, key_prefix: str
) -> None:
    """States built on 150 events, advanced by 1 then 2 events (from entries that also hold a list),
    lists served while nothing changes, then states rebuilt after a late event."""
    common = {
        "bundles": [ml1m_bundles["gru4rec"]],
        "api_key": "k",
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        **PATIENT_STORE,
    }
    users = [f"u{u}" for u in range(USERS)]
    seqs = {f"u{u}": ml1m.sequence(u)[-150:] for u in range(USERS)}

    def events(lo: int, hi: int, ts: int | None = None) -> list[dict]:
        out = []
        for u, seq in seqs.items():
            for n in range(lo, min(hi, len(seq))):
                t = 1000 + n if ts is None else ts
                out.append({"user_id": u, "item_id": ml1m.item_ids[seq[n] - 1], "timestamp": t, "event_id": f"e{n}"})
        return out

    with (
        TestClient(create_app(Settings(**common, user_cache=True))) as on,
        TestClient(create_app(Settings(**common, user_cache=False))) as off,
    ):
        cache = on.app.state.seqrec.user_cache
        # The full recompute's answers by k, until the next write: the cache-off app answers the
        # same histories alike, so a round in which nothing was written reuses them.
        full: dict[int, list[dict]] = {}

        def post(client: TestClient, evs: list[dict]) -> None:
            _post(client, evs)
            full.clear()

        def compare(k: int = 20) -> None:
            asked: list[Request] = [(f"/recommend/{u}", {"k": k}) for u in users]
            if k not in full:
                full[k] = get_json(off, asked)
            for a, b in zip(get_json(on, asked), full[k], strict=True):
                _same(a, b)
            on.portal.call(cache.drain)

        post(on, events(0, 147))
        compare()
        assert cache_outcomes(on)["rebuild"] == USERS  # no state yet: built from the history
        long_enough = sum(len(s) >= 148 for s in seqs.values())
        post(off, events(147, 148))  # one new event, written through the other app
        compare()
        assert cache_outcomes(on).get("advance", 0) == long_enough  # one step each, no re-encode
        post(on, events(148, 150))  # two more in one batch: one call advances both
        compare()
        assert cache_outcomes(on)["advance"] == long_enough + sum(len(s) >= 149 for s in seqs.values())
        before = cache_outcomes(on)
        compare()  # nothing changed: the list stored with the state, checked inside Redis
        assert cache_outcomes(on)["list"] - before.get("list", 0) == USERS
        assert cache_outcomes(on).get("hit", 0) == before.get("hit", 0)
        compare(201)  # longer than the stored list (200 candidates): the state as stored, a new top-k
        assert cache_outcomes(on)["hit"] - before.get("hit", 0) == USERS
        compare(201)  # and that list stored in turn, with the same state
        assert cache_outcomes(on)["list"] - before.get("list", 0) == 2 * USERS
        # A late event lands inside the history: the stored prefix no longer matches, so rebuild.
        late = [{"user_id": u, "item_id": ml1m.item_ids[0], "timestamp": 1000.5, "event_id": "late"} for u in users]
        post(off, late)
        before = cache_outcomes(on)
        compare()
        assert cache_outcomes(on)["rebuild"] - before["rebuild"] == USERS
        assert cache_outcomes(on).get("advance") == before.get("advance")


def test_gru4rec_bundle_offers_the_step_graph_and_it_matches_model_onnx(ml1m_bundles: dict[str, Path]) -> None:
    from app.bundles.bundle import Bundle
    from app.bundles.onnx import ort_session

    gru = Bundle.load(ml1m_bundles["gru4rec"])
    assert Bundle.load(ml1m_bundles["sasrec"]).manifest.incremental is None
    spec = gru.manifest.incremental
    assert spec is not None and spec.kind == "rnn_state" and spec.file in gru.manifest.files
    step = ort_session(gru.path / spec.file)
    rng = np.random.default_rng(3)
    for n in (1, 2, 37, gru.max_len):
        seq = rng.integers(1, gru.manifest.num_items + 1, size=n)
        state = np.zeros((spec.state_shape[0], 1, spec.state_shape[1]), np.float32)
        for item in seq:  # one event at a time
            state, vec = step.run(spec.outputs, {"state": state, "item_seq": np.array([[item]], dtype=np.int64)})
        np.testing.assert_allclose(vec, gru.user_vectors([seq]), atol=1e-5)


def test_memory_store_cache_hits_and_invalidates(bundle_path: Path) -> None:
    with TestClient(create_app(Settings(bundles=[bundle_path], api_key="k"))) as client:
        b = client.app.state.seqrec.registry.get(None)
        _post(client, [{"user_id": "m", "item_id": i, "timestamp": 10 + n} for n, i in enumerate(b.item_ids[:20])])
        one = client.get("/recommend/m").json()
        two = client.get("/recommend/m").json()
        assert _hits(client) == 1.0
        _same(one, two)
        _post(client, [{"user_id": "m", "item_id": b.item_ids[30], "timestamp": 99}])
        three = client.get("/recommend/m").json()
        assert _hits(client) == 1.0 and three["history_length"] == 21
