"""Train a tiny SASRec on real data (ML-100K), check it learns, export it, check the bundle."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import training.optim
import training.rundir
import training.train
from training.batching import pad_left
from training.data import leave_one_out
from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores
from training.export import (
    ExportError,
    check_parity,
    export_bundle,
    export_onnx,
    export_torchscript,
    random_histories,
    sha256_file,
)
from training.train import load_checkpoint, train
from training.zoo import build_model


@pytest.fixture(scope="module")
def trained(ml100k, tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("run")
    result = train(
        "sasrec",
        ml100k,
        run,
        model_overrides={"max_len": 50, "dim": 48, "dropout": 0.2},
        train_overrides={"epochs": 2, "batch_size": 16, "lr": 3e-3, "patience": 5},
        progress=False,
    )
    return result


def test_two_epochs_beat_popularity(trained, ml100k) -> None:
    s = leave_one_out(ml100k)
    pop = full_rank_eval(
        popularity_score_fn(popularity_scores(s.train, ml100k.num_items)),
        s.test_hist,
        s.test_target,
        ml100k.num_items,
        50,
    )
    assert trained.test["ndcg@10"] > pop["ndcg@10"], (trained.test, pop)


def test_run_dir_has_metrics_curve_and_checkpoint(trained) -> None:
    rows = [json.loads(x) for x in (trained.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all("valid_ndcg@10" in r and r["loss"] > 0 for r in rows)
    assert (trained.run_dir / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    final = json.loads((trained.run_dir / "final.json").read_text())
    assert final["test"]["ndcg@10"] == pytest.approx(trained.test["ndcg@10"])


def tiny_sasrec(data, run_dir: Path, **train_overrides: int):
    """A one-layer 16-d SASRec over 20-item histories: seconds a run, for the loop's own tests."""
    model = {"max_len": 20, "dim": 16, "num_layers": 1}
    return train("sasrec", data, run_dir, model_overrides=model, train_overrides=train_overrides, progress=False)


def test_seeded_training_is_deterministic(ml100k, tmp_path: Path) -> None:
    a = tiny_sasrec(ml100k, tmp_path / "a", epochs=1, batch_size=128, max_users=300)
    b = tiny_sasrec(ml100k, tmp_path / "b", epochs=1, batch_size=128, max_users=300)
    assert a.valid["ndcg@10"] == b.valid["ndcg@10"]


def test_sigterm_stops_at_the_next_step_and_finishes_the_run(
    ml100k, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plot = training.rundir.plot_learning_curve

    def plot_then_sigterm(history, path) -> None:  # the signal lands at the end of epoch 1
        plot(history, path)
        if len(history) == 1:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(training.rundir, "plot_learning_curve", plot_then_sigterm)
    monkeypatch.setattr(training.rundir, "PLOT_EVERY_S", 0.0)  # the hook must run after every epoch
    before = signal.getsignal(signal.SIGTERM)
    res = tiny_sasrec(ml100k, tmp_path / "run", epochs=50, eval_every=5, max_users=300)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # epoch 2 stops after its first step
    assert rows[1]["partial"] is True and rows[1]["steps"] == 1 and rows[0]["steps"] == 3
    assert "valid_ndcg@10" in rows[1]  # the epoch it stops in is evaluated, eval_every or not
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["stop_reason"] == res.stop_reason == "SIGTERM" and res.best_epoch == 2 and res.test["users"] == 300
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_learning_curve_redraws_are_throttled_but_the_last_epoch_is_drawn(
    ml100k, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[int] = []
    plot = training.rundir.plot_learning_curve

    def counting_plot(history, path) -> None:
        drawn.append(len(history))
        plot(history, path)

    monkeypatch.setattr(training.rundir, "plot_learning_curve", counting_plot)
    monkeypatch.setattr(training.rundir, "PLOT_EVERY_S", 3600.0)
    tiny_sasrec(ml100k, tmp_path / "run", epochs=3, eval_every=1, max_users=200)
    assert drawn == [3]  # epochs 1-2 fell inside the interval; the final epoch always redraws
    assert (tmp_path / "run" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(trained.run_dir / "best.pt", tmp_path_factory.mktemp("artifacts"), name="b1")


def test_bundle_files_and_checksums(bundle: Path, ml100k) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["model"] == "sasrec"
    assert m["num_items"] == ml100k.num_items and m["max_len"] == 50
    for name, digest in m["files"].items():
        assert sha256_file(bundle / name) == digest
    assert set(m["files"]) >= {"model.onnx", "model.ts", "item_vectors.npy", "item_ids.json", "popularity.npy"}
    assert np.load(bundle / "item_vectors.npy").shape == (ml100k.num_items, m["dim"])
    assert json.loads((bundle / "item_ids.json").read_text()) == ml100k.item_ids
    assert "test" in m["metrics"]
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_onnx_and_torchscript_match_eager(bundle: Path, trained, ml100k) -> None:
    model, _ = load_checkpoint(trained.run_dir / "best.pt")
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(bundle / "model.ts"))
    hists = random_histories(ml100k.num_items, 50, seed=7)
    for arr in [pad_left(hists), pad_left(hists[:1]), pad_left([np.array([3])]), pad_left(hists, 80)]:
        with torch.no_grad():
            ref = model(torch.as_tensor(arr)).numpy()
            assert np.abs(sess.run(["user_vec"], {"item_seq": arr})[0] - ref).max() <= 1e-4
            assert np.abs(ts(torch.as_tensor(arr)).numpy() - ref).max() <= 1e-4


def test_the_torch_export_program_matches_eager(bundle: Path, trained, ml100k) -> None:
    """model.pt2, TorchScript's successor, runs without torch.jit on max_len-padded histories."""
    m = json.loads((bundle / "manifest.json").read_text())
    assert "model.pt2" in m["files"] and m["parity_max_abs_diff"]["torch_export"] <= 1e-4
    model, _ = load_checkpoint(trained.run_dir / "best.pt")
    program = torch.export.load(str(bundle / "model.pt2")).module()
    arr = pad_left([h[-50:] for h in random_histories(ml100k.num_items, 50, seed=3)], 50)  # (B, max_len)
    with torch.no_grad():
        got, ref = program(torch.as_tensor(arr)), model(torch.as_tensor(arr))
    assert got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-4


def test_bundle_top10_equals_model_top10(bundle: Path, trained, ml100k) -> None:
    model, _ = load_checkpoint(trained.run_dir / "best.pt")
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    table = np.load(bundle / "item_vectors.npy")
    s = leave_one_out(ml100k)
    arr = pad_left([h[-50:] for h in s.test_hist[:64]])
    user = sess.run(["user_vec"], {"item_seq": arr})[0]
    served = np.argsort(-(user @ table.T), axis=1, kind="stable")[:, :10] + 1  # rows -> item indices
    with torch.no_grad():
        own = model.score(torch.as_tensor(arr))[:, 1:].argsort(dim=1, descending=True, stable=True)[:, :10] + 1
    assert (served == own.numpy()).mean() > 0.99  # float ties may swap neighbours, nothing more


def test_export_refuses_existing_target(bundle: Path, trained) -> None:
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(trained.run_dir / "best.pt", bundle.parent, name=bundle.name)


@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_absolute_positions_export_with_parity(model_name: str, tmp_path: Path) -> None:
    """The cumulative-sum position ids survive ONNX and TorchScript export (dynamic length)."""
    torch.manual_seed(0)
    model = build_model(model_name, 60, {"max_len": 30, "dim": 32, "num_heads": 2, "positions": "absolute"}).eval()
    example = torch.as_tensor(pad_left(random_histories(60, 30, seed=1)))
    export_onnx(model, tmp_path / "m.onnx", example)
    export_torchscript(model, tmp_path / "m.ts", example)
    assert max(check_parity(model, tmp_path / "m.onnx", tmp_path / "m.ts", 60).values()) <= 1e-4


def test_weight_average_is_an_exponential_moving_average() -> None:
    model = build_model("sasrec", 30, {"max_len": 8, "dim": 8, "num_layers": 1})
    ema = training.optim.weight_average(model, 0.9)
    w = model.item_emb.weight
    first = w.detach().clone()
    ema.update_parameters(model)  # the first update copies the weights
    with torch.no_grad():
        w.add_(1.0)
    ema.update_parameters(model)
    expected = 0.9 * first + 0.1 * (first + 1.0)
    assert torch.allclose(ema.module.item_emb.weight, expected, atol=1e-6)
    assert training.optim.weight_average(model, 0.0) is None
    with pytest.raises(ValueError, match="ema"):
        training.optim.weight_average(model, 1.0)


def test_ema_run_selects_and_keeps_the_averaged_weights(ml100k, tmp_path: Path) -> None:
    res = train(
        "sasrec",
        ml100k,
        tmp_path / "run",
        model_overrides={"max_len": 20, "dim": 16, "num_layers": 1},
        train_overrides={"epochs": 2, "batch_size": 16, "lr": 3e-3, "max_users": 300, "ema": 0.9},
        progress=False,
    )
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[res.best_epoch - 1])
    assert row["raw_valid_ndcg@10"] != row["valid_ndcg@10"]  # two different sets of weights
    # The checkpoint holds the average: re-evaluated, it scores what the average scored.
    assert res.valid["ndcg@10"] == pytest.approx(row["valid_ndcg@10"])
