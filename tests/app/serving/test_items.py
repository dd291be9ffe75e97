"""Cold-start items at serving time: POST /items -> text encoder -> adaptor -> live index.

A tiny UniSRec (tiny local BERT, seconds to train) trained in *inductive* mode, so an item's
vector is a function of its text only: a new item posted with the exact text of a catalogue
item c gets c's vector, which lets the tests say precisely where it must rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[3]
KEY = {"X-API-Key": "items-key"}


@pytest.fixture(scope="session")
def unisrec_bundle(ml100k, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.bert import write_tiny_bert
    from training.data import item_text
    from training.export import export_bundle
    from training.train import train

    bert = write_tiny_bert(tmp_path_factory.mktemp("items-bert"))
    run = tmp_path_factory.mktemp("items-run")
    cfg = {"dim": 16, "max_len": 20, "num_heads": 2, "text_dim": 32, "mode": "inductive", "text_encoder": str(bert)}
    train("unisrec", ml100k, run, cfg, {"epochs": 1, "max_users": 120, "batch_size": 64}, progress=False)
    out = tmp_path_factory.mktemp("items-art")
    return export_bundle(run / "best.pt", out, name="tiny-unisrec", item_text=item_text("ml-100k"), program=False)


def _texts(bundle: Path) -> dict[str, str]:
    return json.loads((bundle / "item_text.json").read_text())


def _head(bundle: Path) -> tuple[int, float]:
    """(D, beta): the sequence model's width and the new-item head's weight, from the manifest."""
    text = json.loads((bundle / "manifest.json").read_text())["text"]
    return text["dim_model"], text["new_item_head"]


def test_text_bundle_loads_and_equals_model_onnx(unisrec_bundle: Path) -> None:
    import onnxruntime as ort

    from app.bundles.loader import load_bundle
    from app.bundles.text import TextBundle

    b = load_bundle(unisrec_bundle)
    assert isinstance(b, TextBundle) and b.takes_text
    ref = ort.InferenceSession(str(unisrec_bundle / "model.onnx"))
    rng = np.random.default_rng(0)
    for n in (1, 5, 20, 33):  # 33 > max_len: truncated alike
        hist = rng.integers(1, b.info.num_items + 1, size=n)
        want = ref.run(["user_vec"], {"item_seq": hist[None].astype(np.int64)})[0]
        np.testing.assert_allclose(b.user_vectors([hist]), want, atol=1e-5)
    # A new item with a catalogue item's exact text gets that item's vector (inductive: text only),
    # flagged new (the last dim of the new-item head, on by default): the model never trained on it.
    D, beta = _head(unisrec_bundle)
    table = np.load(unisrec_bundle / "item_vectors.npy")
    assert beta > 0 and table.shape[1] == b.dim > D
    row = int(np.flatnonzero(table[:, -1] == 0)[0])  # a catalogue item the model was trained on
    c = b.item_ids[row]
    vec = b.encode_texts([_texts(unisrec_bundle)[c]])
    np.testing.assert_allclose(vec[0, :-1], table[row, :-1], atol=1e-4)
    assert vec[0, -1] == 1
    idx = b.add_items(["brand-new"], vec)
    assert idx.tolist() == [b.info.num_items] and b.index_of["brand-new"] == idx[0]
    # A history ending in the new item = the same history ending in its twin c, for the sequence
    # encoder; on top, the head scores candidates by beta x their text cosine to the new item.
    u_new = b.user_vectors([np.array([3, int(idx[0])])])
    u_twin = b.user_vectors([np.array([3, row + 1])])
    np.testing.assert_allclose(u_new[:, :D], u_twin[:, :D], atol=1e-4)
    np.testing.assert_allclose(u_new[0, D:-1], beta * vec[0, D:-1], atol=1e-4)
    assert not u_twin[0, D:].any()


def test_compose_follows_manifest(unisrec_bundle: Path) -> None:
    from app.bundles.text import compose_text

    compose = json.loads((unisrec_bundle / "manifest.json").read_text())["text"]["compose"]
    item = {"item_id": "x", "title": " Stapler ", "categories": ["Office", "", "Staplers"], "brand": "Acme"}
    assert compose_text(item, compose) == "Stapler Office Staplers Acme"
    assert compose_text({"item_id": "x", "title": "T", "description": "long text"}, compose) == "T long text"


@pytest.fixture
def client(unisrec_bundle: Path, ml100k_bundle_path: Path) -> Iterator[TestClient]:
    from app.main import create_app
    from app.settings import Settings

    settings = Settings(bundles=[unisrec_bundle, ml100k_bundle_path], api_key="items-key", access_log=False)
    with TestClient(create_app(settings)) as c:
        yield c


def _events(c: TestClient, user: str, items: list[str]) -> None:
    ev = [{"user_id": user, "item_id": i, "timestamp": 1_600_000_000 + t} for t, i in enumerate(items)]
    assert c.post("/events", json={"events": ev}, headers=KEY).status_code == 200


def test_post_get_and_recommend_new_item(client: TestClient, unisrec_bundle: Path) -> None:
    texts = _texts(unisrec_bundle)
    catalogue = json.loads((unisrec_bundle / "item_ids.json").read_text())
    _events(client, "u1", catalogue[:6])
    before = client.get("/recommend/u1", params={"model": "unisrec", "k": 1}).json()
    assert before["source"] == "model"
    twin = before["items"][0]["item_id"]  # what u1 gets first; post its near-duplicate as a new item
    r = client.post("/items", json={"items": [{"item_id": "new-1", "title": texts[twin]}]}, headers=KEY)
    assert r.status_code == 200, r.text
    # Only the text-capable bundle takes it; the SASRec bundle cannot score an unseen item.
    assert r.json() == {"registered": 1, "items": [{"item_id": "new-1", "models": ["tiny-unisrec"]}]}
    got = client.get("/items/new-1").json()
    assert got["title"] == texts[twin] and got["models"] == ["tiny-unisrec"]
    assert client.get("/items/nope").status_code == 404

    after = client.get("/recommend/u1", params={"model": "unisrec", "k": 2}).json()
    top2 = {x["item_id"]: x["score"] for x in after["items"]}
    assert set(top2) == {twin, "new-1"} and abs(top2[twin] - top2["new-1"]) < 1e-3

    # A history containing the new item is scored by the model, like the same history with its twin.
    _events(client, "u2", [*catalogue[:3], "new-1"])
    _events(client, "u3", [*catalogue[:3], twin])
    a = client.get("/recommend/u2", params={"model": "unisrec", "k": 10}).json()
    b = client.get("/recommend/u3", params={"model": "unisrec", "k": 10}).json()
    assert a["source"] == "model" and a["history_length"] == 4
    # Same sequence-encoder score; u2's newest item is new, so the new-item head adds
    # beta x text cosine (u3's twin, same text, gets it only if the model never trained on it).
    D, beta = _head(unisrec_bundle)
    table = np.load(unisrec_bundle / "item_vectors.npy")
    rows = {c: r for r, c in enumerate(catalogue)}
    t_new, twin_new = table[rows[twin], D:-1], table[rows[twin], -1]
    b_score = {x["item_id"]: x["score"] for x in b["items"]}
    shared = [x for x in a["items"] if x["item_id"] in b_score]
    assert len(shared) >= 5
    for x in shared:
        head = beta * (1 - twin_new) * float(t_new @ table[rows[x["item_id"]], D:-1])
        assert abs(x["score"] - b_score[x["item_id"]] - head) < 1e-3
    sas = client.get("/recommend/u2", params={"model": "sasrec", "k": 5}).json()
    assert sas["history_length"] == 3  # the id-only model ignores the item it does not know

    # A bundle reload re-encodes registered items from their stored text.
    assert client.post("/admin/reload", headers=KEY).status_code == 200
    assert client.get("/items/new-1").json()["models"] == ["tiny-unisrec"]
    again = client.get("/recommend/u1", params={"model": "unisrec", "k": 2}).json()
    assert {x["item_id"] for x in again["items"]} == {twin, "new-1"}


def test_items_validation(client: TestClient) -> None:
    ok = {"item_id": "v1", "title": "A title"}
    assert client.post("/items", json={"items": [ok]}).status_code == 401
    bad = [
        {"items": []},
        {"items": [{**ok, "title": "x" * 501}]},
        {"items": [{**ok, "title": ""}]},
        {"items": [{**ok, "description": "d" * 5001}]},
        {"items": [{**ok, "categories": ["c"] * 21}]},
        {"items": [{**ok, "item_id": "a\x00b"}]},
        {"items": [{**ok, "item_id": "i" * 129}]},
        {"items": [{**ok, "price": 3}]},
        {"items": [{"item_id": "v1"}]},
    ]
    for body in bad:
        r = client.post("/items", json=body, headers=KEY)
        assert r.status_code == 422, (body, r.text)
    # A lone surrogate is valid JSON but not text (pydantic refuses it): 422, never a tokenizer crash.
    raw = b'{"items": [{"item_id": "s1", "title": "x\\ud800y"}]}'
    r = client.post("/items", content=raw, headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    many = {"items": [{"item_id": f"m{i}", "title": "t"} for i in range(101)]}
    assert client.post("/items", json=many, headers=KEY).status_code == 413
    full = {**ok, "description": "d" * 5000, "categories": ["c"] * 20, "brand": "b"}
    r = client.post("/items", json={"items": [full]}, headers=KEY)
    assert r.status_code == 200 and client.get("/items/v1").json()["categories"] == ["c"] * 20


# --------------------------------------------------------------------------- two processes, one Redis


def _serve(bundle: Path, redis_url: str, prefix: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQREC_KEY_PREFIX": prefix, "SEQREC_ACCESS_LOG": "false"}
    cmd = [sys.executable, "-m", "training.cli", "serve", "--bundle", str(bundle), "--port", str(port)]
    cmd += ["--redis-url", redis_url, "--api-key", "items-key"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _ready(proc: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("server did not become ready")


def test_item_posted_to_one_process_is_recommended_by_another(unisrec_bundle: Path, redis_url: str) -> None:
    prefix = f"items-e2e-{free_port()}:"
    procs = [_serve(unisrec_bundle, redis_url, prefix) for _ in range(2)]
    try:
        for proc, base in procs:
            _ready(proc, base)
        (_, a), (_, b) = procs
        catalogue = json.loads((unisrec_bundle / "item_ids.json").read_text())
        ev = [{"user_id": "e2e", "item_id": i, "timestamp": 1_600_000_000 + t} for t, i in enumerate(catalogue[:6])]
        assert httpx.post(f"{a}/events", json={"events": ev}, headers=KEY).status_code == 200
        twin = httpx.get(f"{b}/recommend/e2e", params={"model": "unisrec", "k": 1}).json()["items"][0]["item_id"]
        item = {"item_id": "cold-1", "title": _texts(unisrec_bundle)[twin], "categories": []}
        r = httpx.post(f"{a}/items", json={"items": [item]}, headers=KEY)
        assert r.status_code == 200 and r.json()["items"][0]["models"] == ["tiny-unisrec"]
        t0 = time.monotonic()
        seen_at = None
        while time.monotonic() - t0 < 5:
            got = httpx.get(f"{b}/recommend/e2e", params={"model": "unisrec", "k": 2}).json()
            if "cold-1" in {x["item_id"] for x in got["items"]}:
                seen_at = time.monotonic() - t0
                break
            time.sleep(0.01)
        assert seen_at is not None, "process B never recommended the item posted to A"
        assert seen_at < 1.0, f"process B took {seen_at:.3f}s"
        print(f"\nitem posted to A recommended by B after {seen_at * 1000:.1f} ms")
        assert httpx.get(f"{b}/items/cold-1").json()["models"] == ["tiny-unisrec"]
        # A third process started later catches up from the registry.
        proc_c, c = _serve(unisrec_bundle, redis_url, prefix)
        procs.append((proc_c, c))
        _ready(proc_c, c)
        got = httpx.get(f"{c}/recommend/e2e", params={"model": "unisrec", "k": 2}).json()
        assert "cold-1" in {x["item_id"] for x in got["items"]}
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def test_registry_down_is_503_and_nothing_is_added(unisrec_bundle: Path) -> None:
    from app.main import create_app
    from app.settings import Settings

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: refused at once
    settings = Settings(bundles=[unisrec_bundle], redis_url=dead, api_key="items-key", access_log=False)
    with TestClient(create_app(settings)) as c:  # starting must not need the registry
        r = c.post("/items", json={"items": [{"item_id": "d1", "title": "t"}]}, headers=KEY)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"] == "item registry unavailable; nothing registered; retry after 1 s"
        r = c.get("/items/d1")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        for leak in ("127.0.0.1", dead.rsplit(":", 1)[1].split("/")[0], "Error", "redis"):
            assert leak not in r.text  # the cause is logged, not told
        assert c.delete("/items/d1", headers=KEY).status_code == 503
        assert "d1" not in c.app.state.seqrec.registry.get(None).index_of
        spec = c.get("/openapi.json").json()["paths"]["/items/{item_id}"]
        assert "503" in spec["get"]["responses"] and {"401", "404", "503"} <= set(spec["delete"]["responses"])


# --------------------------------------------------------------------------- delete, encode once


class EncodeCounter:
    """Counts the item texts a TextBundle encodes (the load-time probe excluded)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from app.bundles.text import TextBundle

        self.texts = 0
        real = TextBundle.encode_texts

        def counting(bundle: TextBundle, texts: list[str]) -> np.ndarray:
            if list(texts) != ["probe"]:
                self.texts += len(texts)
            return real(bundle, texts)

        monkeypatch.setattr(TextBundle, "encode_texts", counting)


def _top(c: TestClient, user: str, k: int = 10) -> list[str]:
    return [x["item_id"] for x in c.get(f"/recommend/{user}", params={"model": "unisrec", "k": k}).json()["items"]]


def test_delete_item_stops_serving_it(client: TestClient, unisrec_bundle: Path) -> None:
    texts = _texts(unisrec_bundle)
    catalogue = json.loads((unisrec_bundle / "item_ids.json").read_text())
    _events(client, "d1", catalogue[:6])
    twin = _top(client, "d1", 1)[0]
    assert client.post("/items", json={"items": [{"item_id": "gone-1", "title": texts[twin]}]}, headers=KEY).is_success
    assert "gone-1" in _top(client, "d1", 2)
    _events(client, "d2", [*catalogue[:3], "gone-1"])
    assert client.get("/recommend/d2", params={"model": "unisrec"}).json()["history_length"] == 4
    assert client.delete("/items/gone-1").status_code == 401
    r = client.delete("/items/gone-1", headers=KEY)
    assert r.status_code == 200 and r.json() == {"item_id": "gone-1", "models": ["tiny-unisrec"]}
    assert client.get("/items/gone-1").status_code == 404
    assert "gone-1" not in _top(client, "d1", 50)
    # Its events stay stored; the model just no longer knows the item.
    assert client.get("/recommend/d2", params={"model": "unisrec"}).json()["history_length"] == 3
    assert client.delete("/items/gone-1", headers=KEY).status_code == 404
    assert client.delete(f"/items/{catalogue[0]}", headers=KEY).status_code == 404  # catalogue items stay
    assert catalogue[0] in client.app.state.seqrec.registry.get("unisrec").index_of
    # Registered again, it is served again.
    assert client.post("/items", json={"items": [{"item_id": "gone-1", "title": texts[twin]}]}, headers=KEY).is_success
    assert "gone-1" in _top(client, "d1", 2)
    # A reload does not bring a deleted item back.
    assert client.delete("/items/gone-1", headers=KEY).status_code == 200
    assert client.post("/admin/reload", headers=KEY).status_code == 200
    assert "gone-1" not in _top(client, "d1", 50)


def test_reload_does_not_re_encode_registered_items(
    client: TestClient, unisrec_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = EncodeCounter(monkeypatch)
    items = [{"item_id": f"once-{n}", "title": f"a registered item number {n}"} for n in range(30)]
    assert client.post("/items", json={"items": items}, headers=KEY).status_code == 200
    assert count.texts == 30  # encoded once, when registered
    for _ in range(2):
        assert client.post("/admin/reload", headers=KEY).status_code == 200
    assert count.texts == 30  # reloads of the same bundle version read the vectors back
    assert client.get("/items/once-7").json()["models"] == ["tiny-unisrec"]
    # A changed text is a new vector, at once (not served stale), and reloads reuse that one.
    changed = {"item_id": "once-7", "title": "a completely different text"}
    assert client.post("/items", json={"items": [changed]}, headers=KEY).status_code == 200
    assert count.texts == 31
    assert client.post("/admin/reload", headers=KEY).status_code == 200
    assert count.texts == 31
    bundle = client.app.state.seqrec.registry.get("unisrec")
    want = bundle.encode_texts([bundle.item_text(changed)])[0]
    np.testing.assert_allclose(bundle.vectors(np.array([bundle.index_of["once-7"]]))[0], want, atol=1e-6)


def test_item_encoded_once_across_processes_and_deleted_everywhere(
    unisrec_bundle: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two app instances on one Redis (what two workers are): the one that receives POST /items
    encodes; the other, and both reloads, read the shared vectors. A delete on one reaches the other."""
    from app.main import create_app
    from app.settings import Settings

    def settings() -> Settings:
        return Settings(
            bundles=[unisrec_bundle], api_key="items-key", access_log=False, redis_url=redis_url, key_prefix=key_prefix
        )

    count = EncodeCounter(monkeypatch)
    with TestClient(create_app(settings())) as a, TestClient(create_app(settings())) as b:
        for c in (a, b):
            assert client_subscribed(c)
        items = [{"item_id": f"shared-{n}", "title": f"shared item {n}"} for n in range(20)]
        assert a.post("/items", json={"items": items}, headers=KEY).status_code == 200
        wait_until(lambda: b.get("/items/shared-19").json()["models"] == ["tiny-unisrec"])
        assert count.texts == 20  # encoded by A only; B added A's vectors
        va = a.app.state.seqrec.registry.get(None)
        vb = b.app.state.seqrec.registry.get(None)
        np.testing.assert_array_equal(
            va.vectors(np.array([va.index_of["shared-3"]])), vb.vectors(np.array([vb.index_of["shared-3"]]))
        )
        assert b.post("/admin/reload", headers=KEY).status_code == 200
        wait_until(lambda: a.app.state.seqrec.items.generation == b.app.state.seqrec.items.generation)
        assert count.texts == 20  # neither reload encoded anything
        gone = a.delete("/items/shared-3", headers=KEY)
        # The answer names the bundle that served it, although the process's own follower may
        # remove it (on the deletion's announcement) before the route reads the bundles.
        assert gone.status_code == 200 and gone.json()["models"] == ["tiny-unisrec"]
        for n in range(5, 10):  # a race the follower wins only sometimes: ask several times
            r = b.delete(f"/items/shared-{n}", headers=KEY)
            assert r.status_code == 200 and r.json()["models"] == ["tiny-unisrec"], r.json()
        wait_until(lambda: "shared-3" not in b.app.state.seqrec.registry.get(None).index_of)
        assert b.get("/items/shared-3").status_code == 404
    # A process started later catches up from the shared vectors too.
    with TestClient(create_app(settings())) as c:
        held = c.app.state.seqrec.registry.get(None).index_of
        assert "shared-4" in held and "shared-3" not in held
    assert count.texts == 20


def client_subscribed(c: TestClient) -> bool:
    items = c.app.state.seqrec.items
    wait_until(lambda: items.subscribed.is_set())
    return True


def wait_until(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")
