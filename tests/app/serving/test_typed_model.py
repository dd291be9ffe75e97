"""A SASRec trained with task.type_input, exported and served: model.onnx reads each event's type,
the manifest names the types, and the API's lists are the ones eager PyTorch gives for the same
typed history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from app.bundles.loader import load_bundle
from app.main import create_app
from app.settings import Settings
from tests.support.data import synthetic_interactions
from training.checkpoint import load_checkpoint
from training.data.preprocess import build_sequences
from training.event_types import train_with_types
from training.export import PARITY_TOL, export_bundle

NAMES = ("view", "like", "dislike")


@pytest.fixture(scope="module")
def typed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(best.pt, bundle) of a tiny SASRec that reads types, trained for a few seconds."""
    inter = synthetic_interactions(num_users=80, num_items=50, seed=4)
    draw = np.random.default_rng(4).choice(3, size=len(inter.users), p=[0.4, 0.45, 0.15])
    inter.types = np.array(NAMES, dtype=object)[draw]
    inter.type_names = NAMES
    data = build_sequences(inter, "typed-toy")
    data.meta["event_types"] = {"negative": ["dislike"], "target": ["like"]}
    run = tmp_path_factory.mktemp("typed-run")
    train_with_types(
        "sasrec",
        data,
        run,
        {"max_len": 16, "dim": 16, "num_layers": 2, "num_heads": 2},
        {"epochs": 2, "batch_size": 32, "device": "cpu", "num_threads": 1},
        {"type_input": True},
        progress=False,
    )
    bundle = export_bundle(run / "best.pt", tmp_path_factory.mktemp("typed-art"), name="typed-sasrec")
    return run / "best.pt", bundle


def eager_list(ckpt: Path, items: list[str], types: list[str], k: int) -> tuple[list[str], list[float]]:
    """What the checkpoint lists for a typed history: negative events not read, their items and the
    seen ones left out, type ids = position in the data's type names + 1."""
    model, meta = load_checkpoint(ckpt)
    index = {x: i + 1 for i, x in enumerate(meta["item_ids"])}
    kept = [(index[i], meta["type_names"].index(t) + 1) for i, t in zip(items, types, strict=True) if t != "dislike"]
    seq = torch.tensor([[i for i, _ in kept]])
    type_seq = torch.tensor([[t for _, t in kept]])
    with torch.no_grad():
        scores = (model(seq, type_seq) @ model.item_vectors().T)[0].numpy()  # (N+1,)
    scores[0] = -np.inf
    scores[[index[i] for i in items]] = -np.inf  # seen and disliked
    top = np.argsort(-scores, kind="stable")[:k]
    return [meta["item_ids"][i - 1] for i in top], scores[top].tolist()


def test_the_bundle_reads_types_and_matches_eager_pytorch(typed_run: tuple[Path, Path]) -> None:
    ckpt, bundle_dir = typed_run
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["event_types"] == {"input": "event_type", "names": list(NAMES), "dtype": "int64"}
    assert manifest["model_config"]["num_types"] == 3
    assert max(manifest["parity_max_abs_diff"].values()) <= PARITY_TOL
    graph = onnx.load(str(bundle_dir / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["item_seq", "event_type"]
    # The service's encoder, fed typed histories, gives eager PyTorch's vectors.
    model, _ = load_checkpoint(ckpt)
    bundle = load_bundle(bundle_dir)
    assert bundle.needs_types
    rng = np.random.default_rng(0)
    hists = [rng.integers(1, model.num_items + 1, size=n) for n in (1, 3, 16, 21)]
    types = [rng.integers(1, 3, size=len(h)) for h in hists]  # views and likes
    for h, t in zip(hists, types, strict=True):
        got = bundle.typed_vectors([h], [t])
        with torch.no_grad():
            want = model(torch.as_tensor(h[None]), torch.as_tensor(t[None])).numpy()
        assert np.abs(got - want).max() < 1e-4
    # The types matter: the same items as views only give another vector.
    assert (
        np.abs(
            bundle.typed_vectors([hists[2]], [np.ones(16, np.int64)]) - bundle.typed_vectors([hists[2]], [types[2]])
        ).max()
        > 1e-4
    )
    # Explanations' graph reads every event as the first type, as the service feeds it.
    assert manifest["ablation"]["parity_max_abs_diff"] <= PARITY_TOL


def test_typed_events_posted_to_the_api_get_eager_pytorchs_list(typed_run: tuple[Path, Path]) -> None:
    ckpt, bundle_dir = typed_run
    settings = Settings(
        bundles=[bundle_dir],
        api_key="k3y",
        event_types="view,like,dislike",
        default_event_type="view",
        negative_event_types="dislike",
    )
    _, meta = load_checkpoint(ckpt)
    ids = meta["item_ids"]
    items = [ids[n] for n in (3, 11, 7, 30, 42, 19, 25)]
    types = ["like", "view", "dislike", "like", "like", "view", "like"]
    k = 8
    want_ids, want_scores = eager_list(ckpt, items, types, k)
    with TestClient(create_app(settings)) as c:
        sent = c.post("/recommend", json={"items": items, "types": types, "k": k}).json()
        assert [i["item_id"] for i in sent["items"]] == want_ids and sent["history_length"] == 6
        assert [i["score"] for i in sent["items"]] == pytest.approx(want_scores, abs=1e-4)
        # A stored user with the same typed events gets the same list.
        evs: list[dict[str, Any]] = [
            {"user_id": "u", "item_id": i, "timestamp": 1_700_000_000 + n, "type": t}
            for n, (i, t) in enumerate(zip(items, types, strict=True))
        ]
        r = c.post("/events", json={"events": evs}, headers={"X-API-Key": "k3y"})
        assert r.status_code == 200, r.text
        for _ in range(2):
            stored = c.get("/recommend/u", params={"k": k}).json()
            assert [i["item_id"] for i in stored["items"]] == want_ids
        # The same items all sent as views score otherwise: the model reads the types.
        views = c.post(
            "/recommend", json={"items": items, "types": ["view" if t != "dislike" else t for t in types], "k": k}
        ).json()
        assert [i["score"] for i in views["items"]] != pytest.approx(want_scores, abs=1e-4)
