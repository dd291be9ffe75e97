"""HSTU served from a per-user key/value cache (app/serving/usercache.py, `KvCache`): a tiny HSTU
trained on ML-100K (with its event times, and without), exported with step.onnx (float16 cache), and
read through the API after appends one at a time, several at once, a late event and past max_len:
every answer equals an app with the cache off on the same Redis, and the counters say which path
each read took (advance, hit, list, rebuild)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.bundles.bundle import Bundle
from app.main import create_app
from app.serving.usercache import Answer, KvCache, pack_entry, unpack_entry, unpack_vector, vector_base
from app.settings import Settings
from app.stores import MemoryStore
from app.stores.usercache import MemoryBackend
from tests.support.parity import PATIENT_STORE, cache_outcomes
from training.data import SeqData

KEY = {"X-API-Key": "k"}
MAX_LEN = 50
MODEL = {"max_len": MAX_LEN, "dim": 16, "num_heads": 2}
TRAIN = {"epochs": 1, "batch_size": 64, "max_users": 300, "loss": "ce"}
USERS = 40
START = 30  # events each user has before the first read
LONGER = 300  # k past the candidates a list of 20 keeps (200)
SCORE_TOL = 1e-4  # a float16 cache against model.onnx in float32, on scores up to 1 / temperature = 20


@pytest.fixture(scope="module")
def hstu_bundles(ml100k: SeqData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.export import export_bundle
    from training.train import train

    art = tmp_path_factory.mktemp("kv-bundles")
    out = {}
    for name, over in (("timed", {}), ("untimed", {"time_buckets": 0})):
        run = tmp_path_factory.mktemp(f"kv-run-{name}")
        train("hstu", ml100k, run, {**MODEL, **over}, TRAIN, progress=False)
        out[name] = export_bundle(run / "best.pt", art, name=f"kv-hstu-{name}")
    return out


def _post(client: TestClient, events: list[dict]) -> None:
    for s in range(0, len(events), 1000):
        r = client.post("/events", json={"events": events[s : s + 1000]}, headers=KEY)
        assert r.status_code == 200, r.text


def _same(a: dict, b: dict, near_ties: bool = False) -> None:
    """The same list (ids in order, scores within SCORE_TOL); with `near_ties`, two items whose scores
    differ by less than the float16 error may come in either order (deep in a 300-item list)."""
    assert a["source"] == b["source"] == "model"
    assert a["history_length"] == b["history_length"]
    ids_a, ids_b = [x["item_id"] for x in a["items"]], [x["item_id"] for x in b["items"]]
    score_a, score_b = [x["score"] for x in a["items"]], [x["score"] for x in b["items"]]
    np.testing.assert_allclose(score_a, score_b, atol=SCORE_TOL)  # position by position: swaps keep this
    if not near_ties:
        assert ids_a == ids_b
        return
    where = {i: s for i, s in zip(ids_b, score_b, strict=True)}
    for n, (i, j) in enumerate(zip(ids_a, ids_b, strict=True)):
        if i != j:  # item i is where b has an item of (almost) the same score
            assert abs(where.get(i, score_b[-1]) - score_b[n]) <= 2 * SCORE_TOL, (n, i, j)


class Histories:
    """Real ML-100K users' events, with their real times made strictly increasing (+1 s per event),
    so that every new event is the newest and lands after the others."""

    def __init__(self, data: SeqData, users: int) -> None:
        self.data = data
        self.seqs = {f"u{u}": data.sequence(u) for u in range(users) if len(data.sequence(u)) > MAX_LEN + 10}
        self.times = {u: data.times(int(u[1:])) for u in self.seqs}

    def events(self, lo: int, hi: int) -> list[dict]:
        out = []
        for u, seq in self.seqs.items():
            for n in range(lo, hi):
                t = int(self.times[u][n]) + n
                out.append(
                    {"user_id": u, "item_id": self.data.item_ids[seq[n] - 1], "timestamp": t, "event_id": f"e{n}"}
                )
        return out

    def late(self, at: int) -> list[dict]:
        """One event per user between its events `at - 1` and `at`: inside the history, not after it."""
        out = []
        for u, seq in self.seqs.items():
            t = int(self.times[u][at - 1]) + at - 1 + 0.5
            out.append({"user_id": u, "item_id": self.data.item_ids[seq[0] - 1], "timestamp": t, "event_id": "late"})
        return out


@pytest.fixture
def apps(hstu_bundles: dict[str, Path], redis_url: str, key_prefix: str) -> Iterator[tuple[TestClient, TestClient]]:
    common = {
        "bundles": list(hstu_bundles.values()),
        "api_key": "k",
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        **PATIENT_STORE,
    }
    with (
        TestClient(create_app(Settings(**common))) as on,
        TestClient(create_app(Settings(**common, user_cache=False, fast_reads=False))) as off,
    ):
        yield on, off


def test_bundle_offers_the_kv_cache(hstu_bundles: dict[str, Path]) -> None:
    for name, path in hstu_bundles.items():
        m = json.loads((path / "manifest.json").read_text())
        inc = m["incremental"]
        assert inc["kind"] == "kv_cache" and inc["file"] == "step.onnx" and "step.onnx" in m["files"]
        assert inc["cache_dtype"] == "float16" and inc["cache_shape"] == [2, 16, 16] and inc["max_len"] == MAX_LEN
        assert inc["times"] == (name == "timed") and len(inc["inputs"]) == (5 if name == "timed" else 3)
        assert inc["outputs"] == ["cache_k_out", "cache_v_out", "user_vec"]
        assert 0 < inc["parity_max_abs_diff"] <= 5e-3
        b = Bundle.load(path)
        # digest, n, K and V of 2 layers x 16 wide in float16 per event, [times,] the user vector
        per_event = 2 * (16 + 16) * 2 + (8 if name == "timed" else 0)
        assert KvCache.size(b, 200) == 16 + 4 + 200 * per_event + 4 * b.dim


@pytest.mark.parametrize("name", ["timed", "untimed"])
def test_served_from_the_kv_cache_equals_the_full_encode(
    name: str, hstu_bundles: dict[str, Path], apps: tuple[TestClient, TestClient], ml100k: SeqData
) -> None:
    on, off = apps
    model = f"kv-hstu-{name}"
    cache = on.app.state.seqrec.user_cache
    h = Histories(ml100k, USERS)
    users = list(h.seqs)
    assert len(users) >= 20

    def compare(k: int = 20) -> None:
        for u in users:
            got = on.get(f"/recommend/{u}", params={"k": k, "model": model})
            assert got.status_code == 200, got.text
            _same(got.json(), off.get(f"/recommend/{u}", params={"k": k, "model": model}).json(), k > 20)
        on.portal.call(cache.drain)

    def delta(before: dict[str, float]) -> dict[str, float]:
        now = cache_outcomes(on, drop_zero=True)
        return {k: now[k] - before.get(k, 0.0) for k in now if now[k] != before.get(k, 0.0)}

    _post(on, h.events(0, START))
    before = cache_outcomes(on, drop_zero=True)
    compare()
    assert delta(before) == {"rebuild": len(users)}  # no entry yet: each built from an empty cache
    for n in range(START, START + 3):  # one event at a time, written through the other app
        _post(off, h.events(n, n + 1))
        before = cache_outcomes(on, drop_zero=True)
        compare()
        assert delta(before) == {"advance": len(users)}
    _post(on, h.events(START + 3, START + 7))  # several at once: one step over the four
    before = cache_outcomes(on, drop_zero=True)
    compare()
    assert delta(before) == {"advance": len(users)}
    before = cache_outcomes(on, drop_zero=True)
    compare()  # nothing new: the list stored with the cache, checked inside Redis
    assert delta(before) == {"list": len(users)}
    compare(LONGER)  # longer than the stored list: the cached vector, a new top-k
    assert delta(before) == {"list": len(users), "hit": len(users)}

    _post(off, h.late(START))  # a late event lands inside the history: the prefix no longer matches
    before = cache_outcomes(on, drop_zero=True)
    compare()
    assert delta(before) == {"rebuild": len(users)}
    _post(off, h.events(START + 7, START + 8))  # and the rebuilt cache advances again
    before = cache_outcomes(on, drop_zero=True)
    compare()
    assert delta(before) == {"advance": len(users)}

    # Past max_len (START + 8 + 1 late = 39 events; 12 more = 51): the window slides, model.onnx.
    _post(off, h.events(START + 8, START + 20))
    before = cache_outcomes(on, drop_zero=True)
    compare()
    assert delta(before) == {"rebuild": len(users)}
    before = cache_outcomes(on, drop_zero=True)
    compare(LONGER)  # unchanged, longer than the stored list: the vector model.onnx gave is kept
    assert delta(before) == {"hit": len(users)}
    _post(off, h.events(START + 20, START + 21))  # every append slides the window again
    before = cache_outcomes(on, drop_zero=True)
    compare()
    assert delta(before) == {"rebuild": len(users)}


def test_kv_cache_in_process_store_advances_too(hstu_bundles: dict[str, Path], ml100k: SeqData) -> None:
    """Without Redis (no lists): the cache lives in the process and is extended the same way."""
    h = Histories(ml100k, 12)
    users = list(h.seqs)
    common = {"bundles": [hstu_bundles["timed"]], "api_key": "k"}
    with (
        TestClient(create_app(Settings(**common))) as on,
        TestClient(create_app(Settings(**common, user_cache=False))) as off,
    ):
        for lo, hi, outcome in (
            (0, START, "rebuild"),
            (START, START + 1, "advance"),
            (START + 1, START + 3, "advance"),
        ):
            _post(on, h.events(lo, hi))
            _post(off, h.events(lo, hi))
            before = cache_outcomes(on, drop_zero=True).get(outcome, 0.0)
            for u in users:
                _same(on.get(f"/recommend/{u}").json(), off.get(f"/recommend/{u}").json())
            assert cache_outcomes(on, drop_zero=True)[outcome] - before == len(users)
        for u in users:
            _same(on.get(f"/recommend/{u}").json(), off.get(f"/recommend/{u}").json())
        assert cache_outcomes(on, drop_zero=True)["hit"] == len(users)


def test_the_entry_round_trips_and_other_layouts_are_refused(hstu_bundles: dict[str, Path]) -> None:
    b = Bundle.load(hstu_bundles["timed"])
    empty = KvCache.empty(b)
    assert empty.n == 0 and empty.k.shape == (2, 1, 0, 16) and empty.k.dtype == np.float16
    rng = np.random.default_rng(0)
    n = 7
    k = rng.standard_normal((2, 1, n, 16)).astype(np.float16)
    v = rng.standard_normal((2, 1, n, 16)).astype(np.float16)
    times = np.arange(n, dtype=np.int64) + 978_300_000
    vec = rng.standard_normal((1, b.dim)).astype(np.float32)
    raw = KvCache(b"d" * 16, n, k, v, times, vec).to_bytes()
    assert len(raw) == KvCache.size(b, n)
    answer = Answer(np.array([4, 2]), np.array([0.5, 0.25], np.float32), n)
    for blob in (pack_entry(b"", raw, None), pack_entry(b"t\0" + b"1\0a\0b\0\0", raw, answer)):
        got = KvCache.parse(blob, b)
        assert got is not None and (got.digest, got.n) == (b"d" * 16, n)
        assert np.array_equal(got.k, k) and np.array_equal(got.v, v) and np.array_equal(got.times, times)
        assert np.array_equal(got.vec, vec) and got.to_bytes() == raw
    vector_entry = pack_entry(b"", vector_base(b"d" * 16, vec), None)
    for other in (vector_entry, pack_entry(b"", raw[:-1], None), pack_entry(b"", raw + b"x", None), raw, None):
        assert KvCache.parse(other, b) is None
    assert unpack_vector(pack_entry(b"", raw, None), b.dim) is None  # never read as a vector
    # What the read script returns for a list that still holds: the check and the list, no base.
    check = b"t\0" + b"1\0a\0b\0\0"
    full = pack_entry(check, raw, answer)
    listed = full[: full.index(b"\0", len(check)) + 1] + full[-(4 + 8 * 2) :]
    got = unpack_entry(listed, 0)
    assert got is not None and got[0] == check and got[2] is not None and got[2].labels.tolist() == [4, 2]


def test_in_process_entries_are_bounded_by_bytes() -> None:
    backend = MemoryBackend(MemoryStore(max_history=10, ttl_s=60), ttl_s=60, max_bytes=250_000)
    for u in range(5):
        backend.put(f"u{u}", "b", bytes(80_000))
    assert backend.nbytes == 240_000 and len(backend._entries) == 3  # the oldest two evicted
    backend.put("u4", "b", bytes(10))  # replacing an entry counts its new size only
    assert backend.nbytes == 160_010


def test_an_hstu_bundle_without_the_section_still_loads_and_is_cached_as_a_vector(
    hstu_bundles: dict[str, Path], tmp_path: Path
) -> None:
    """As bundles exported before step.onnx: no `incremental`, served with the cached vector."""
    old = tmp_path / "old-hstu"
    shutil.copytree(hstu_bundles["timed"], old)
    m = json.loads((old / "manifest.json").read_text())
    del m["incremental"]
    del m["files"]["step.onnx"]
    (old / "step.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(m))
    b = Bundle.load(old)
    assert b.manifest.incremental is None
    with TestClient(create_app(Settings(bundles=[old], api_key="k"))) as client:
        events = [{"user_id": "o", "item_id": i, "timestamp": 100 + n} for n, i in enumerate(b.item_ids[:10])]
        _post(client, events)
        assert client.get("/recommend/o").json()["source"] == "model"
        assert client.get("/recommend/o").json()["source"] == "model"
        assert cache_outcomes(client, drop_zero=True) == {"miss": 1.0, "hit": 1.0}
