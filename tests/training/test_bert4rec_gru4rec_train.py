"""BERT4Rec and GRU4Rec: a few epochs on real data (ML-100K) beat popularity; bundles match eager.

GRU4Rec beats popularity after 1-2 epochs. BERT4Rec's Cloze objective learns next-item ranking
more slowly: on ML-100K it is still below popularity after 2 epochs and level with it at epochs
4-5 (on a Zen 4 EPYC the best-validation epoch 4 tested 0.0449 against popularity's 0.0453, a
coin toss decided by the CPU's kernels), and clear of it by epoch 8 (0.0555, HR@10 0.108 vs
0.087), so its run here has 8 short epochs (max_len 50, d=32).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.batching import pad_left
from training.data import leave_one_out, to_sessions
from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores
from training.export import export_bundle, random_histories
from training.sessions import session_split
from training.train import load_checkpoint, subset_split, train

RUNS = {
    "bert4rec": dict(
        model_overrides={"max_len": 50, "dim": 32, "num_heads": 2},
        train_overrides={
            "epochs": 8,
            "batch_size": 16,
            "lr": 3e-3,
            "weight_decay": 0.0,
            "num_threads": 1,
            "extra": {"mask_prob": 0.2, "last_item_ratio": 1.0},
        },
    ),
    "gru4rec": dict(
        model_overrides={"max_len": 50, "dim": 48},
        train_overrides={
            "epochs": 1,
            "batch_size": 64,
            "lr": 3e-3,
            "num_negatives": 256,
            "num_threads": 1,
            "max_users": 400,
        },
    ),
    "gru4rec-padded-bpr": dict(
        model_overrides={"max_len": 50, "dim": 48},
        train_overrides={
            "epochs": 2,
            "batch_size": 16,
            "lr": 3e-3,
            "num_threads": 1,
            "loss": "bpr-max",
            "extra": {"parallel": "padded", "n_extra_negatives": 256, "alpha": 0.5, "bpreg": 1.0},
        },
    ),
}


def _popularity(ml100k, max_users: int | None, max_len: int = 50) -> dict[str, float]:
    s = subset_split(leave_one_out(ml100k), max_users)
    pop = popularity_score_fn(popularity_scores(s.train, ml100k.num_items))
    return full_rank_eval(pop, s.test_hist, s.test_target, ml100k.num_items, max_len)  # type: ignore[return-value]


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request, ml100k, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    model = name.split("-")[0]
    result = train(model, ml100k, tmp_path_factory.mktemp(name), progress=False, **RUNS[name])
    return name, result


def test_short_training_beats_popularity(trained, ml100k) -> None:
    name, result = trained
    pop = _popularity(ml100k, RUNS[name]["train_overrides"].get("max_users"))
    assert result.test["ndcg@10"] > pop["ndcg@10"] and result.test["hr@10"] > pop["hr@10"], (name, result.test, pop)


def test_bundle_same_contract_as_sasrec_and_parity(trained, ml100k, tmp_path: Path) -> None:
    name, result = trained
    bundle = export_bundle(result.run_dir / "best.pt", tmp_path, name="b", program=False)
    m = json.loads((bundle / "manifest.json").read_text())
    model, _ = load_checkpoint(result.run_dir / "best.pt")
    assert m["model"] == name.split("-")[0] and m["max_len"] == 50
    table = np.load(bundle / "item_vectors.npy")
    assert table.shape == (ml100k.num_items, m["dim"])  # [mask] row not exported
    assert max(m["parity_max_abs_diff"].values()) <= 1e-4
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(bundle / "model.ts"))
    hists = random_histories(ml100k.num_items, 50, seed=3)
    for arr in [pad_left(hists), pad_left(hists[:1]), pad_left([np.array([5])]), pad_left(hists, 70)]:
        with torch.no_grad():
            ref = model(torch.as_tensor(arr)).numpy()
            got_ts = ts(torch.as_tensor(arr)).numpy()
        assert ref.shape[1] == m["dim"]
        assert np.abs(sess.run(["user_vec"], {"item_seq": arr})[0] - ref).max() <= 1e-4
        assert np.abs(got_ts - ref).max() <= 1e-4
    # The service's top-k (plain history -> ONNX -> inner product with the table) is the model's own.
    s = leave_one_out(ml100k)
    arr = pad_left([h[-50:] for h in s.test_hist[:64]])
    served = np.argsort(-(sess.run(["user_vec"], {"item_seq": arr})[0] @ table.T), axis=1, kind="stable")[:, :10] + 1
    with torch.no_grad():
        own = model.score(torch.as_tensor(arr))[:, 1 : ml100k.num_items + 1].argsort(dim=1, descending=True)[:, :10] + 1
    assert (served == own.numpy()).mean() > 0.99


def test_gru4rec_next_item_in_session(ml100k, tmp_path: Path) -> None:
    sess = to_sessions(ml100k, "gap", gap_seconds=1800)
    split = session_split(sess, test_frac=0.1, valid_frac=0.1)
    result = train(
        "gru4rec",
        sess,
        tmp_path,
        model_overrides={"max_len": 50, "dim": 48},
        train_overrides={"epochs": 1, "batch_size": 64, "lr": 3e-3, "num_negatives": 256, "num_threads": 1},
        progress=False,
        split=split,
        exclude_history=False,
    )
    pop = popularity_score_fn(popularity_scores(split.train, sess.num_items))
    base = full_rank_eval(pop, split.test_hist, split.test_target, sess.num_items, 50, exclude_history=False)
    assert result.test["users"] == len(split.test_target)
    assert result.test["hr@20"] > base["hr@20"] and result.test["mrr@20"] > base["mrr@20"], (result.test, base)
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["exclude_history"] is False
