"""HRNN training: the session-aware split, the task's timed batches, train + evaluate on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from training.cli import app
from training.data import DatasetError, SeqData
from training.hrnn import HRNNTask, user_session_split

GAP = 1800


def _timeline() -> SeqData:
    """u0: sessions [1 2] [3 4 5] [6 7]; u1: [8 9] [10]; u2: one event. Times in seconds."""
    seqs = {
        "u0": ([1, 2, 3, 4, 5, 6, 7], [0, 60, 5000, 5100, 5200, 20000, 20030]),
        "u1": ([8, 9, 10], [0, 10, 9000]),
        "u2": ([3], [100]),
    }
    items = np.concatenate([s for s, _ in seqs.values()]).astype(np.int32)
    times = np.concatenate([t for _, t in seqs.values()]).astype(np.int64)
    offsets = np.r_[0, np.cumsum([len(s) for s, _ in seqs.values()])].astype(np.int64)
    return SeqData("toy", list(seqs), [str(i) for i in range(1, 11)], offsets, items, times)


def _lists(xs: list[np.ndarray]) -> list[list[int]]:
    return [x.tolist() for x in xs]


def test_user_split_last_session_is_test_the_one_before_validation() -> None:
    s = user_session_split(_timeline(), GAP, "user")
    # u0 trains on what precedes its validation session; u1 (two sessions) is training data only.
    assert _lists(s.train) == [[1, 2], [8, 9, 10]]
    assert _lists(s.train_times) == [[0, 60], [0, 10, 9000]]
    assert _lists(s.valid_hist) == [[1, 2, 3], [1, 2, 3, 4]] and s.valid_target.tolist() == [4, 5]
    assert _lists(s.valid_times) == [[0, 60, 5000], [0, 60, 5000, 5100]]
    assert _lists(s.test_hist) == [[1, 2, 3, 4, 5, 6]] and s.test_target.tolist() == [7]
    assert _lists(s.test_times) == [[0, 60, 5000, 5100, 5200, 20000]]


def test_session_history_gives_the_same_queries_with_the_current_session_only() -> None:
    user, ses = user_session_split(_timeline(), GAP, "user"), user_session_split(_timeline(), GAP, "session")
    assert ses.valid_target.tolist() == user.valid_target.tolist()
    assert ses.test_target.tolist() == user.test_target.tolist()
    assert _lists(ses.valid_hist) == [[3], [3, 4]] and _lists(ses.test_hist) == [[6]]
    assert _lists(ses.test_times) == [[20000]]
    assert _lists(ses.train) == [[1, 2], [8, 9]]  # training sessions of 2+ events, before validation


def test_split_needs_timestamps() -> None:
    data = _timeline()
    data.timestamps = None
    with pytest.raises(DatasetError, match="needs timestamps"):
        user_session_split(data)


def test_task_batches_carry_each_items_own_time() -> None:
    rng = np.random.default_rng(0)
    train = [rng.integers(1, 50, n) for n in (3, 8, 30, 2)]
    times = [s * 100 + 7 for s in train]  # every event's time encodes its item
    task = HRNNTask(max_len=10, bucket=True, newest_prob=0.5)
    rows = 0
    for b in task.batches(train, 2, rng, torch.device("cpu"), times=times):
        items, stamps, target = b["item_seq"], b["time_seq"], b["target"]
        assert torch.equal(stamps, torch.where(items != 0, items * 100 + 7, 0))
        assert items.shape[1] <= 10
        # target = the next item: shifted by one wherever both are real
        both = (items[:, 1:] != 0) & (target[:, :-1] != 0)
        assert torch.equal(items[:, 1:][both], target[:, :-1][both])
        rows += len(items)
    assert rows == 4
    with pytest.raises(ValueError, match="event times"):
        next(task.batches(train, 2, rng, torch.device("cpu")))


def test_train_and_evaluate_rebuild_the_same_session_split(ml100k: SeqData, data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--data-dir", str(data_dir)]
    args = ["train", "--model", "hrnn", "--dataset", "ml-100k", "--sessions", "user-gap", "--epochs", "1"]
    args += ["--set", "model.dim=16", "--set", "model.user_dim=8", "--set", "model.max_len=40", "--num-threads", "1"]
    r = CliRunner().invoke(app, [*args, "--out", str(run), *common])
    assert r.exit_code == 0, r.output
    final = json.loads((run / "final.json").read_text())
    split = user_session_split(ml100k, GAP, "user")
    assert final["test"]["users"] == len(split.test_target) > 1000
    r = CliRunner().invoke(app, ["evaluate", str(run / "best.pt"), *common])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["protocol"] == "user-sessions" and out["queries"] == len(split.test_target)
    assert out["full"]["ndcg@10"] == pytest.approx(final["test"]["ndcg@10"], abs=1e-6)


def test_hrnn_on_data_without_times_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    f.write_text("user_id,item_id\n" + "".join(f"u{u},i{(u + k) % 7}\n" for u in range(12) for k in range(6)))
    r = CliRunner().invoke(app, ["train", "--model", "hrnn", "--file", str(f), "--epochs", "1", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "timestamps" in r.output
