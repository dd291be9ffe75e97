"""Explanations, similar items and diversified lists, for every model kind, on real data.

Faithfulness is checked against the model itself (the bundle's TorchScript graph, not the ONNX
path the service uses): removing an item's top-attributed history event must lower that item's
score more than removing another, random event of the explained window.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.bundles.bundle import Bundle
from app.bundles.loader import load_bundle
from app.main import create_app
from app.serving.diversity import POOL_MIN, rerank
from app.serving.explain import ablation_batch, contributions, explain, top_events
from app.settings import Settings
from tests.app.bundles.test_all_models_served import TINY
from tests.app.serving.test_items import unisrec_bundle  # noqa: F401 (a session fixture, shared)
from training.export import ExportError, export_bundle
from training.train import train

KEY = {"X-API-Key": "k"}
KINDS = ["sasrec", "bert4rec", "gru4rec", "unisrec"]


@pytest.fixture(scope="module")
def kind_bundles(
    ml100k,
    ml100k_bundle_path: Path,  # the SASRec fixture on ML-100K, like the other kinds here
    unisrec_bundle: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    out = {"sasrec": ml100k_bundle_path, "unisrec": unisrec_bundle}
    art = tmp_path_factory.mktemp("explain-art")
    for kind, (model_over, train_over) in TINY.items():
        run = tmp_path_factory.mktemp(f"explain-{kind}")
        train(kind, ml100k, run, model_overrides=model_over, train_overrides=train_over, progress=False)
        out[kind] = export_bundle(
            run / "best.pt", art, name=f"ex-{kind}", layer_vectors=kind == "bert4rec", program=False
        )
    return out


def _histories(data, b: Bundle, users: int, max_len: int = 60) -> list[np.ndarray]:
    """Real ML-100K histories (model indices), every 31st user, at most max_len events."""
    out = []
    for u in range(0, data.num_users, 31)[:users]:
        hist = b.encode([data.item_ids[i - 1] for i in data.sequence(u)])[-max_len:]
        if len(hist) >= 5:
            out.append(hist)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_removing_the_top_event_lowers_the_score_more_than_a_random_one(kind: str, kind_bundles, ml100k) -> None:
    path = kind_bundles[kind]
    b = load_bundle(path)
    ts = torch.jit.load(str(path / "model.ts"))
    table = np.load(path / "item_vectors.npy").astype(np.float64)

    def score(hist: np.ndarray, item: int) -> float:  # the model's own score, TorchScript
        with torch.no_grad():
            u = ts(torch.as_tensor(hist[-b.max_len :][None].astype(np.int64))).double().numpy()[0]
        return float(table[item - 1] @ u)

    rng = np.random.default_rng(0)
    wins = pairs = 0
    for hist in _histories(ml100k, b, 20):
        labels, _ = b.index.search(b.user_vectors([hist]), 5, [hist])
        contrib = contributions(b, hist, labels[0], 50)
        n = len(contrib)
        assert n == min(len(hist), 50, b.max_len)
        for c, item in enumerate(labels[0].tolist()):
            top = int(np.argmax(contrib[:, c]))
            other = int(rng.choice([a for a in range(n) if a != top]))
            last = len(hist) - 1
            drop_top = score(np.delete(hist, last - top), item)
            drop_other = score(np.delete(hist, last - other), item)
            wins += drop_top < drop_other
            pairs += 1
    assert pairs >= 50
    assert wins / pairs >= 0.9, f"{kind}: top event wins {wins}/{pairs}"


def test_explain_reports_weighted_history_events(kind_bundles) -> None:
    path = kind_bundles["sasrec"]
    with TestClient(create_app(Settings(bundles=[path], api_key="k", access_log=False))) as c:
        b = c.app.state.seqrec.registry.get(None)
        history = b.item_ids[10:40]
        events = [{"user_id": "ex", "item_id": i, "timestamp": 100 + n} for n, i in enumerate(history)]
        assert c.post("/events", json={"events": events}, headers=KEY).status_code == 200
        plain = c.get("/recommend/ex", params={"k": 8}).json()
        r = c.get("/recommend/ex", params={"k": 8, "explain": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert all("because" not in it for it in plain["items"])
        assert [it["item_id"] for it in body["items"]] == [it["item_id"] for it in plain["items"]]
        seen = b.encode(history)
        contrib = contributions(b, seen, b.encode([it["item_id"] for it in body["items"]]), 50)
        for col, it in zip(contrib.T, body["items"], strict=True):
            because = it["because"]
            assert 1 <= len(because) <= 3
            ages = [e["age"] for e in because]
            assert [e["item_id"] for e in because] == [history[-1 - a] for a in ages]
            assert ages[0] == int(np.argmax(col))
            assert all(e["contribution"] > 0 for e in because)
            assert [e["contribution"] for e in because] == sorted((e["contribution"] for e in because), reverse=True)
            total = col[col > 0].sum()
            np.testing.assert_allclose([e["weight"] for e in because], col[ages] / total, rtol=1e-5)
            assert sum(e["weight"] for e in because) <= 1 + 1e-6
        # No history: the popularity answer, with empty explanations rather than an error.
        cold = c.get("/recommend/nobody", params={"k": 5, "explain": "true"}).json()
        assert cold["source"] == "popularity" and [it["because"] for it in cold["items"]] == [[]] * 5


def test_explain_is_one_batched_encoder_call(kind_bundles, ml100k) -> None:
    b = load_bundle(kind_bundles["gru4rec"])
    calls: list[int] = []
    real = b.padded_vectors

    def counting(batch, threads=1):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return real(batch, threads)

    b.padded_vectors = counting  # type: ignore[method-assign]
    hist = _histories(ml100k, b, 1, max_len=80)[0]
    why = explain(b, hist, np.array([1, 2, 3]), n_max=50)
    assert calls == [min(50, len(hist)) + 1] and len(why) == 3


def _exact_cosine(table: np.ndarray, row: int, k: int) -> list[int]:
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    sims = unit @ unit[row]
    sims[row] = -np.inf
    return np.argsort(-sims, kind="stable")[:k].tolist()


@pytest.fixture(scope="module")
def ml1m_bundle(ml1m, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ml1m-sim-run")
    train(
        "sasrec",
        ml1m,
        run,
        model_overrides={"max_len": 30, "dim": 16, "num_layers": 1},
        train_overrides={"epochs": 1, "batch_size": 128, "max_users": 400},
        progress=False,
    )
    return export_bundle(run / "best.pt", tmp_path_factory.mktemp("ml1m-sim"), name="ml1m-sim", program=False)


def test_similar_items_equal_an_exact_search_on_ml1m(ml1m_bundle: Path) -> None:
    table = np.load(ml1m_bundle / "item_vectors.npy")
    ids = json.loads((ml1m_bundle / "item_ids.json").read_text())
    assert len(ids) == 3416
    with TestClient(create_app(Settings(bundles=[ml1m_bundle], access_log=False))) as c:
        for row in (0, 17, 500, 3415):
            r = c.get(f"/items/{ids[row]}/similar", params={"k": 10})
            assert r.status_code == 200, r.text
            got = [x["item_id"] for x in r.json()["items"]]
            assert ids[row] not in got
            assert got == [ids[j] for j in _exact_cosine(table, row, 10)]
            scores = [x["score"] for x in r.json()["items"]]
            assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1
        r = c.get("/items/no-such-item/similar")
        assert r.status_code == 404 and "not in bundle" in r.text and "no-such-item" not in r.text  # never echoed
        for bad in ({"k": 0}, {"k": 1001}, {"k": "x"}):
            r = c.get(f"/items/{ids[0]}/similar", params=bad)
            assert r.status_code == 422 and r.json()["detail"].startswith("query.k"), r.text
        r = c.get(f"/items/{ids[0]}/similar", params={"space": "layers4"})
        assert r.status_code == 422 and "space" in r.json()["detail"]
        assert "/items/{item_id}/similar" in c.get("/openapi.json").json()["paths"]
    # The approximate index (HNSW) path: never the item itself, and here the same neighbours.
    hnsw = load_bundle(ml1m_bundle, ann_threshold=0)
    labels, _ = hnsw.spaces["output"].neighbours(18, 10)
    assert 18 not in labels.tolist()
    assert len(set(labels.tolist()) & {j + 1 for j in _exact_cosine(table, 17, 10)}) >= 9


def test_layer_vectors_space_for_bert4rec(kind_bundles) -> None:
    path = kind_bundles["bert4rec"]
    manifest = json.loads((path / "manifest.json").read_text())
    space = manifest["item_spaces"]["layers4"]
    vecs = np.load(path / space["file"])
    d = manifest["model_config"]["dim"]
    layers = min(4, manifest["model_config"]["num_layers"] + 1)
    assert vecs.shape == (manifest["num_items"], layers * d) and space["dim"] == layers * d
    with TestClient(create_app(Settings(bundles=[path], access_log=False))) as c:
        item = c.app.state.seqrec.registry.get(None).item_ids[7]
        r = c.get(f"/items/{item}/similar", params={"k": 5, "space": "layers4"})
        assert r.status_code == 200 and r.json()["space"] == "layers4"
        assert [x["item_id"] for x in r.json()["items"]] == [
            c.app.state.seqrec.registry.get(None).item_ids[j] for j in _exact_cosine(vecs, 7, 5)
        ]


def test_similar_items_of_an_item_posted_a_second_ago(unisrec_bundle: Path) -> None:  # noqa: F811
    texts = json.loads((unisrec_bundle / "item_text.json").read_text())
    catalogue = json.loads((unisrec_bundle / "item_ids.json").read_text())
    twin = next(i for i in catalogue if list(texts.values()).count(texts[i]) == 1)
    with TestClient(create_app(Settings(bundles=[unisrec_bundle], api_key="k", access_log=False))) as c:
        assert c.get("/items/fresh-1/similar").status_code == 404
        item = {"item_id": "fresh-1", "title": texts[twin]}
        assert c.post("/items", json={"items": [item]}, headers=KEY).status_code == 200
        r = c.get("/items/fresh-1/similar", params={"k": 5})
        assert r.status_code == 200, r.text
        got = [x["item_id"] for x in r.json()["items"]]
        assert got[0] == twin and "fresh-1" not in got  # same text: the nearest item
        # ... and the online index holds it for every other item's neighbours too.
        b = c.app.state.seqrec.registry.get(None)
        labels, _ = b.spaces["output"].neighbours(b.index_of[twin], len(b.item_ids))
        assert b.index_of["fresh-1"] in labels.tolist() and b.index_of[twin] not in labels.tolist()
        fresh = b.index_of["fresh-1"]
        # Deleted: no longer anyone's neighbour, and its own similar items are a 404.
        assert c.delete("/items/fresh-1", headers=KEY).status_code == 200
        assert c.get("/items/fresh-1/similar").status_code == 404
        labels, _ = b.spaces["output"].neighbours(b.index_of[twin], len(b.item_ids))
        assert fresh not in labels.tolist()


def _ild(unit: np.ndarray) -> float:
    sims = unit @ unit.T
    n = len(unit)
    return float((1 - sims)[~np.eye(n, dtype=bool)].mean())


def test_diversified_lists_are_deterministic_and_follow_the_rule(kind_bundles, tmp_path: Path) -> None:
    path = kind_bundles["sasrec"]
    clusters = np.load(path / "clusters.npy")
    with TestClient(create_app(Settings(bundles=[path], api_key="k", access_log=False))) as c:
        b = c.app.state.seqrec.registry.get(None)
        history = b.item_ids[50:70]
        events = [{"user_id": "dv", "item_id": i, "timestamp": 100 + n} for n, i in enumerate(history)]
        assert c.post("/events", json={"events": events}, headers=KEY).status_code == 200

        def get(**params: object) -> list[str]:
            r = c.get("/recommend/dv", params={"k": 10, **params})
            assert r.status_code == 200, r.text
            return [x["item_id"] for x in r.json()["items"]]

        plain = get()
        assert get(diversify=1.0) == plain
        for cap in (1, 2):
            got = get(max_per_cluster=cap)
            assert got == get(max_per_cluster=cap) and len(got) == 10
            assert np.bincount(clusters[b.encode(got) - 1]).max() <= cap
        mmr = get(diversify=0.3)
        assert mmr == get(diversify=0.3) and mmr[0] == plain[0] and len(set(mmr)) == 10
        # The MMR rule, re-derived step by step from the candidate pool.
        seen = b.encode(history)
        cand, scores = b.index.search(b.user_vectors([seen]), POOL_MIN, [seen])
        unit = b.spaces["output"].unit(cand[0])
        rel = (scores[0] - scores[0].min()) / (scores[0].max() - scores[0].min())
        picked: list[int] = []
        for item in mmr:
            pos = list(cand[0]).index(b.index_of[item])
            value = 0.3 * rel - 0.7 * (np.max(unit @ unit[picked].T, axis=1) if picked else 0)
            value[picked] = -np.inf
            assert value[pos] >= value.max() - 1e-9
            picked.append(pos)
        assert _ild(b.spaces["output"].unit(b.encode(mmr))) > _ild(b.spaces["output"].unit(b.encode(plain)))
        both = get(diversify=0.5, max_per_cluster=1)
        assert np.bincount(clusters[b.encode(both) - 1]).max() == 1
        # Bounds name the parameter.
        for bad in ({"diversify": 1.5}, {"diversify": -0.1}, {"diversify": "mmr"}, {"max_per_cluster": 0}):
            r = c.get("/recommend/dv", params=bad)
            assert r.status_code == 422 and r.json()["detail"].startswith(f"query.{next(iter(bad))}"), r.text
        # The popularity answer is re-ranked alike.
        cold = c.get("/recommend/cold", params={"k": 10, "max_per_cluster": 1}).json()
        assert cold["source"] == "popularity"
        assert np.bincount(clusters[b.encode([x["item_id"] for x in cold["items"]]) - 1]).max() == 1
    # A bundle exported without clusters: MMR still works, max_per_cluster is refused by name.
    old = tmp_path / "no-clusters"
    shutil.copytree(path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["clusters"], manifest["files"]["clusters.npy"]
    (old / "clusters.npy").unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(Settings(bundles=[old], access_log=False))) as c:
        assert c.get("/recommend/x", params={"diversify": 0.5}).status_code == 200
        r = c.get("/recommend/x", params={"max_per_cluster": 2})
        assert r.status_code == 422 and "max_per_cluster" in r.json()["detail"] and "clusters" in r.json()["detail"]


def test_rerank_ties_and_short_pools() -> None:
    scores = np.array([3.0, 3.0, 2.0, 1.0], np.float32)
    unit = np.eye(4, dtype=np.float32)
    assert rerank(scores, unit, None, 4, 0.5, None).tolist() == [0, 1, 2, 3]
    # Two clusters, at most one each: the list stops at two rather than breaking the cap.
    assert rerank(scores, None, np.array([0, 0, 1, 1]), 4, 1.0, 1).tolist() == [0, 2]


def test_export_writes_clusters(kind_bundles) -> None:
    for kind in KINDS:
        path = kind_bundles[kind]
        manifest = json.loads((path / "manifest.json").read_text())
        assign = np.load(path / "clusters.npy")
        assert assign.dtype == np.int32 and assign.shape == (manifest["num_items"],)
        assert assign.max() + 1 == manifest["clusters"]["num_clusters"] and len(np.unique(assign)) > 1
        assert "clusters.npy" in manifest["files"]


def test_layer_vectors_need_a_bidirectional_encoder(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app as cli

    with pytest.raises(ExportError, match="layer_vectors"):
        export_bundle(tiny_run / "best.pt", tmp_path, name="no-layers", layer_vectors=True, program=False)
    assert not (tmp_path / "no-layers").exists()
    args = ["export", str(tiny_run / "best.pt"), "--out", str(tmp_path), "--name", "x", "--layer-vectors"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "layer_vectors" in r.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("ann_threshold", [0, 10**9])  # HNSW, exact
def test_item_space_grows_online(ann_threshold: int) -> None:
    from app.bundles.index import unit_rows
    from app.bundles.spaces import ItemSpace

    v = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    space = ItemSpace("output", v[:200], ann_threshold)
    for start in range(200, 300, 25):  # several adds: the lookup table grows
        space.add(np.arange(start + 1, start + 26), v[start : start + 25])
    assert len(space) == 300 and space.has(300) and not space.has(301)
    np.testing.assert_allclose(space.unit(np.arange(1, 301)), unit_rows(v), atol=1e-6)
    labels, _ = space.neighbours(250, 5)
    assert labels.tolist() == [j + 1 for j in _exact_cosine(v, 249, 5)]


def test_items_added_online_join_the_nearest_cluster() -> None:
    from app.bundles.clusters import Clusters
    from app.bundles.index import unit_rows

    rng = np.random.default_rng(1)
    centres = unit_rows(rng.normal(size=(3, 6)))
    assign = np.repeat(np.arange(3), 20)
    unit = unit_rows(centres[assign] + 0.05 * rng.normal(size=(60, 6)))
    clusters = Clusters(assign, unit)
    assert clusters.count == 3 and clusters.of(np.array([1, 21, 41])).tolist() == [0, 1, 2]
    clusters.add(unit_rows(centres[[2, 0]] + 0.01))
    assert clusters.of(np.array([61, 62])).tolist() == [2, 0]


def test_the_ablation_graph_gives_the_batched_numbers(kind_bundles, ml100k) -> None:
    """ablation.onnx (causal SASRec) returns what N + 1 histories through model.onnx return."""
    b = load_bundle(kind_bundles["sasrec"])
    assert b.ablation is not None and "ablation.onnx" in b.manifest.files
    assert all(load_bundle(kind_bundles[k]).ablation is None for k in ("bert4rec", "gru4rec"))
    rng = np.random.default_rng(3)
    # Short, exactly max_len, and longer than max_len (an older event slides into the window).
    real = _histories(ml100k, b, 12, max_len=b.max_len + 20)
    short = [h[-n:] for h, n in zip(real[8:], (2, 3, 9, 17), strict=True)]
    hists = real[:4] + [h[-b.max_len :] for h in real[4:8]] + short
    assert max(len(h) for h in hists) > b.max_len and min(len(h) for h in hists) == 2
    b.ablation.cheaper = lambda *_: True  # type: ignore[method-assign]  # the graph for every length here
    for hist in hists:
        labels = rng.integers(1, len(b.item_ids) + 1, size=7)
        for n in (2, 5, 50):
            graph = contributions(b, hist, labels, n)
            saved, b.ablation = b.ablation, None
            try:
                batched = contributions(b, hist, labels, n)
            finally:
                b.ablation = saved
            assert graph.shape == batched.shape == (min(n, len(hist), b.max_len), 7)
            np.testing.assert_allclose(graph, batched, atol=1e-5, rtol=0)


def _legacy_ablation_graph(bundle: Path, out: Path) -> None:
    """The graph as bundles wrote it before `history_row`: (A + 1, D), row 0 = model.onnx on the
    window's newest max_len events, then the A ablations (composed from the bundle's two graphs)."""
    import onnx
    from onnx import compose, helper

    manifest = json.loads((bundle / "manifest.json").read_text())
    max_len = int(manifest["max_len"])
    enc = compose.add_prefix(onnx.load(str(bundle / "model.onnx")), "enc_")
    abl = compose.add_prefix(onnx.load(str(bundle / "ablation.onnx")), "abl_")
    window, ages = (i.name[len("abl_") :] for i in abl.graph.input)
    consts = [
        helper.make_tensor(name, onnx.TensorProto.INT64, [1], [value])
        for name, value in (("legacy_start", -max_len), ("legacy_end", 1 << 62), ("legacy_axis", 1))
    ]
    nodes = [
        helper.make_node("Slice", [window, "legacy_start", "legacy_end", "legacy_axis"], [enc.graph.input[0].name]),
        helper.make_node("Identity", [window], [abl.graph.input[0].name]),
        helper.make_node("Identity", [ages], [abl.graph.input[1].name]),
        *enc.graph.node,
        *abl.graph.node,
        helper.make_node("Concat", [enc.graph.output[0].name, abl.graph.output[0].name], ["user_vec"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "legacy_ablation",
        [
            helper.make_tensor_value_info(window, onnx.TensorProto.INT64, [1, "T"]),
            helper.make_tensor_value_info(ages, onnx.TensorProto.INT64, ["A"]),
        ],
        [helper.make_tensor_value_info("user_vec", onnx.TensorProto.FLOAT, ["rows", None])],
        initializer=[*enc.graph.initializer, *abl.graph.initializer, *consts],
    )
    model = helper.make_model(graph, opset_imports=list(abl.opset_import))
    model.ir_version = abl.ir_version
    onnx.save(model, str(out))


def test_bundles_with_the_older_ablation_graph_still_explain(kind_bundles, ml100k, tmp_path: Path) -> None:
    """A bundle whose ablation.onnx returns the history's own vector first (no `history_row` in its
    manifest, as written before) is read as such: the same contributions as today's graph."""
    from training.export import sha256_file

    src = kind_bundles["sasrec"]
    dst = tmp_path / "legacy-sasrec"
    shutil.copytree(src, dst)
    _legacy_ablation_graph(src, dst / "ablation.onnx")
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["ablation"].pop("history_row") is False
    manifest["files"]["ablation.onnx"] = sha256_file(dst / "ablation.onnx")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    new, old = load_bundle(src), load_bundle(dst)
    assert new.ablation is not None and old.ablation is not None and old.ablation.skip == 1
    for b in (new, old):
        b.ablation.cheaper = lambda *_: True  # type: ignore[method-assign,union-attr]  # the graph everywhere
    rng = np.random.default_rng(7)
    for hist in _histories(ml100k, new, 6, max_len=new.max_len + 5):
        labels = rng.integers(1, len(new.item_ids) + 1, size=5)
        user = new.user_vectors([hist])[0]
        want = contributions(new, hist, labels, 50, user=user)
        np.testing.assert_allclose(contributions(old, hist, labels, 50, user=user), want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(contributions(old, hist, labels, 50), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_explanation_threads_give_the_single_thread_numbers(kind: str, kind_bundles, ml100k) -> None:
    """SEQREC_EXPLAIN_THREADS: the explanation call on its own 2-thread session, same contributions."""
    b = load_bundle(kind_bundles[kind])
    sessions = b.seq_sessions if hasattr(b, "seq_sessions") else b.sessions
    two = sessions.get(2)
    assert two is not sessions.get(1) and two is sessions.get(2)  # opened once, apart from the serving one
    assert two.get_session_options().intra_op_num_threads == 2
    assert sessions.get(1).get_session_options().intra_op_num_threads == 1
    rng = np.random.default_rng(5)
    paths = [False, True] if b.ablation is not None else [False]
    for hist in _histories(ml100k, b, 6, max_len=b.max_len + 10):
        labels = rng.integers(1, len(b.item_ids) + 1, size=10)
        for forced_graph in paths:
            saved = b.ablation
            if forced_graph:
                b.ablation.cheaper = lambda *_: True  # type: ignore[method-assign,union-attr]
            else:
                b.ablation = None
            try:
                one = contributions(b, hist, labels, 50, threads=1)
                many = contributions(b, hist, labels, 50, threads=2)
            finally:
                b.ablation = saved
            assert one.shape == many.shape == (min(50, len(hist), b.max_len), 10)
            np.testing.assert_allclose(many, one, atol=1e-5, rtol=0)


def test_explain_threads_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import app.settings as settings_mod

    monkeypatch.setenv("SEQREC_BUNDLES", str(tmp_path))
    monkeypatch.delenv("SEQREC_EXPLAIN_THREADS", raising=False)
    monkeypatch.setattr(settings_mod, "_cores", lambda: 2)
    assert Settings().explain_threads == 2
    monkeypatch.setattr(settings_mod, "_cores", lambda: 1)
    assert Settings().explain_threads == 1
    monkeypatch.setenv("SEQREC_EXPLAIN_THREADS", "1")
    monkeypatch.setattr(settings_mod, "_cores", lambda: 8)
    assert Settings().explain_threads == 1
    monkeypatch.setenv("SEQREC_EXPLAIN_THREADS", "0")
    with pytest.raises(ValueError, match="explain_threads"):
        Settings()


def test_top_events_by_the_definition() -> None:
    """Per item: the positive events, largest first, ties to the newer one, weight = share of the
    positive total; an item with no positive contribution gets none."""
    contrib = np.array([[0.5, -1.0, 0.0], [0.25, -2.0, 0.0], [0.5, -0.5, 0.0], [-0.1, -3.0, 0.0]], np.float32)
    got = top_events(contrib, ["a", "b", "c", "d"], top=3)
    assert got[1] == [] and got[2] == []
    assert [(e["item_id"], e["age"]) for e in got[0]] == [("a", 0), ("c", 2), ("b", 1)]
    assert [e["weight"] for e in got[0]] == pytest.approx([0.4, 0.4, 0.2], abs=1e-7)
    assert [e["contribution"] for e in got[0]] == [0.5, 0.5, 0.25]
    assert all(type(e["age"]) is int and type(e["weight"]) is float for e in got[0])
    assert top_events(contrib, ["a", "b", "c", "d"], top=1)[0] == got[0][:1]


def test_ablation_batch_is_the_ablated_histories_left_padded() -> None:
    """The index-built batch equals the definition: np.delete of each event, newest max_len kept, left-padded."""
    rng = np.random.default_rng(2)
    for max_len in (1, 2, 5, 50):
        for T in range(1, max_len + 2):
            window = rng.integers(1, 1000, size=T).astype(np.int64)
            for n in {1, min(T, max_len), max(1, min(T, max_len) // 2)}:
                hists = [window[-max_len:]] + [np.delete(window, T - 1 - a)[-max_len:] for a in range(n)]
                width = max(len(h) for h in hists)
                want = np.full((n + 1, width), -1, np.int64)
                for row, h in zip(want, hists, strict=True):
                    row[width - len(h) :] = h
                np.testing.assert_array_equal(ablation_batch(window, n, max_len, -1), want)
