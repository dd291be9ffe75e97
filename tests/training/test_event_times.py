"""Event times through training and export (tests/support/timed.py: a toy model that reads them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.bundles.bundle import Bundle
from app.bundles.manifest import TIMED_FORMAT_VERSION, BundleError, parse_manifest
from tests.support.data import synthetic_seqdata
from tests.support.timed import register_toy, toy_bundle
from training import zoo
from training.batching import pad_left
from training.config import ConfigError
from training.data.preprocess import leave_one_out
from training.evaluate import full_rank_eval


@pytest.fixture
def toy_spec(monkeypatch: pytest.MonkeyPatch) -> zoo.ModelSpec:
    return register_toy(monkeypatch)


def test_leave_one_out_times_are_parallel_and_never_hold_the_target_time() -> None:
    data = synthetic_seqdata(num_users=40)
    split = leave_one_out(data)
    assert split.train_times is not None and split.valid_times is not None and split.test_times is not None
    for u, (h, t) in enumerate(zip(split.test_hist, split.test_times, strict=True)):
        assert len(h) == len(t)
        np.testing.assert_array_equal(t, data.times(u)[:-1])  # every user here has >= 3 events
    for h, t in zip(split.valid_hist, split.valid_times, strict=True):
        assert len(h) == len(t)
    sub = split.subset(7)
    assert len(sub.test_times) == len(sub.test_hist) == 7  # type: ignore[arg-type]


def test_full_rank_eval_feeds_times_aligned_with_items() -> None:
    hists = [np.array([3, 4, 5, 6]), np.array([2])]
    times = [np.array([10, 20, 30, 40]), np.array([7])]
    got: list[tuple[np.ndarray, np.ndarray]] = []

    def score_fn(seq: torch.Tensor, tseq: torch.Tensor) -> torch.Tensor:
        got.append((seq.numpy(), tseq.numpy()))
        return torch.zeros(len(seq), 8)

    full_rank_eval(score_fn, hists, np.array([1, 1]), 7, max_len=3, times=times, pass_times=True)
    seq, tseq = got[0]
    assert ((seq == 0) == (tseq == 0)).all()  # padding at the same places
    assert tseq.tolist() == [[0, 0, 7], [20, 30, 40]]  # sorted by length, newest max_len kept
    with pytest.raises(ValueError, match="times"):
        full_rank_eval(score_fn, hists, np.array([1, 1]), 7, max_len=3, pass_times=True)


def test_a_timed_model_trains_exports_and_serves_with_its_times(toy_spec: zoo.ModelSpec, tmp_path: Path) -> None:
    from training.checkpoint import load_checkpoint

    data = synthetic_seqdata(num_users=60)
    bundle_dir, ckpt = toy_bundle(data, tmp_path)
    manifest = parse_manifest(__import__("json").loads((bundle_dir / "manifest.json").read_text()))
    assert manifest.format_version == TIMED_FORMAT_VERSION and manifest.onnx.time_input == "time_seq"
    assert manifest.parity_max_abs_diff["onnx"] < 1e-4

    bundle = Bundle.load(bundle_dir)
    model, _ = load_checkpoint(ckpt)
    model.eval()
    split = leave_one_out(data)
    hists, times = split.test_hist[:20], split.test_times[:20]  # type: ignore[index]
    served = bundle.user_vectors(hists, times)
    with torch.no_grad():
        ref = model(
            torch.as_tensor(pad_left([h[-12:] for h in hists])), torch.as_tensor(pad_left([t[-12:] for t in times]))
        )
    np.testing.assert_allclose(served, ref.numpy(), atol=1e-4)
    shifted = [t.copy() for t in times]
    shifted[0][-1] += 10_000  # another gap before the newest event: another vector
    assert np.abs(bundle.user_vectors(hists[:1], shifted[:1]) - served[:1]).max() > 1e-4
    with pytest.raises(ValueError, match="times"):
        bundle.user_vectors(hists)


def test_a_timed_model_on_data_without_times_is_refused_before_training(
    toy_spec: zoo.ModelSpec, tmp_path: Path
) -> None:
    from dataclasses import replace

    from training.train import train

    data = replace(synthetic_seqdata(num_users=30), timestamps=None)
    with pytest.raises(ConfigError, match="needs event timestamps"):
        train("toytime", data, tmp_path / "run", train_overrides={"epochs": 1}, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_format_2_manifest_cannot_declare_times_and_unknown_transforms_are_refused(tmp_path: Path) -> None:
    base = {
        "format_version": 2,
        "name": "x",
        "model": "x",
        "version": "1",
        "max_len": 4,
        "dim": 2,
        "num_items": 3,
        "onnx": {"opset": 17, "time_input": "time_seq"},
        "files": {},
    }
    with pytest.raises(BundleError, match="format_version must be 3"):
        parse_manifest(base)
    assert parse_manifest({**base, "format_version": 3}).reads_times
    from app.bundles.history import check_transform

    with pytest.raises(BundleError, match="not known"):
        check_transform({"kind": "no-such-kind"})
