"""The time budget and signals stop training between steps, mid-epoch; the partial epoch is
evaluated and kept when it is the best; a long epoch logs its progress with an ETA."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import training.budget
import training.rundir
import training.train
from training.budget import Budget, EpochLog
from training.config import TrainConfig
from training.optim import LrFactor
from training.train import train

TINY = {"max_len": 10, "dim": 8, "num_layers": 1}


class FakeClock:
    """Seconds that pass only when read: `step` per read, so a run of minutes takes a moment."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_budget_stops_mid_epoch_and_the_partial_epoch_is_evaluated_and_kept(
    synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training.budget, "clock", FakeClock(1.0))  # a few seconds a step
    over = {"epochs": 5, "batch_size": 16, "max_minutes": 0.5}  # 300 users: 19 steps an epoch
    res = train("sasrec", synthetic, tmp_path / "run", model_overrides=TINY, train_overrides=over, progress=False)
    rows = rows_of(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1] and rows[0]["partial"] is True
    assert 1 <= rows[0]["steps"] < 19  # stopped well inside the first epoch
    assert "valid_ndcg@10" in rows[0]  # evaluated, and the only candidate: kept
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["stop_reason"] == res.stop_reason == "max_minutes" and final["best_epoch"] == res.best_epoch == 1
    assert (tmp_path / "run" / "best.pt").is_file() and res.test["users"] == len(synthetic.user_ids)


def test_a_full_epoch_has_no_partial_mark_and_counts_its_steps(synthetic, tmp_path: Path) -> None:
    over = {"epochs": 1, "batch_size": 16}
    train("sasrec", synthetic, tmp_path / "run", model_overrides=TINY, train_overrides=over, progress=False)
    (row,) = rows_of(tmp_path / "run")
    assert row["steps"] == 19 and "partial" not in row


def test_a_signal_mid_epoch_stops_at_the_next_step(synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = {"n": 0}
    tick = EpochLog.tick

    def tick_then_signal(self, done, mean_loss) -> None:  # the loop's per-step hook: SIGTERM at step 3
        tick(self, done, mean_loss)
        steps["n"] += 1
        if steps["n"] == 3:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(EpochLog, "tick", tick_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    over = {"epochs": 5, "batch_size": 16}
    res = train("sasrec", synthetic, tmp_path / "run", model_overrides=TINY, train_overrides=over, progress=False)
    (row,) = rows_of(tmp_path / "run")
    assert row["steps"] == 3 and row["partial"] is True and "valid_ndcg@10" in row
    assert res.stop_reason == "SIGTERM" and res.best_epoch == 1
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_later_partial_epoch_that_is_worse_is_not_kept(
    synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Best-validation selection is unchanged by a partial epoch: evaluated, kept only if better."""
    validations = iter([0.30, 0.10])  # epoch 1, then the partial epoch 2

    def fake_eval(*args, **kwargs) -> dict[str, float]:
        ndcg = next(validations, 0.2)
        return {"ndcg@10": ndcg, "hr@10": ndcg, "users": 1.0}

    clock = FakeClock(0.0)
    monkeypatch.setattr(training.budget, "clock", clock)
    monkeypatch.setattr(training.train, "evaluate_model", fake_eval)
    plot = training.rundir.plot_learning_curve

    def plot_then_spend_budget(history, path) -> None:  # after epoch 1, time runs fast: 40 s a read
        plot(history, path)
        clock.step = 40.0

    monkeypatch.setattr(training.rundir, "plot_learning_curve", plot_then_spend_budget)
    monkeypatch.setattr(training.rundir, "PLOT_EVERY_S", 0.0)
    over = {"epochs": 5, "batch_size": 16, "max_minutes": 2.0}
    res = train("sasrec", synthetic, tmp_path / "run", model_overrides=TINY, train_overrides=over, progress=False)
    rows = rows_of(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["partial"] is True and rows[1]["steps"] < 19
    assert rows[1]["valid_ndcg@10"] == 0.10 and res.best_epoch == 1 and res.stop_reason == "max_minutes"


def test_budget_estimates_the_last_step_from_the_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(0.0)
    monkeypatch.setattr(training.budget, "clock", clock)
    budget = Budget(max_minutes=1.0)
    clock.now += 40.0  # 10 steps in 40 s: 4 s a step, so a 60 s budget ends at step 15
    assert budget.last_step(10) == 15
    clock.now += 1.0
    assert budget.last_step(11) == 0  # re-estimated at most every REESTIMATE_S
    assert budget.last_step(11, force=True) == 17  # 11 steps in 41 s: 60 s is 16.1 steps
    assert Budget(None).last_step(10, force=True) == 0 and Budget(1.0).last_step(0, force=True) == 0
    clock.now += 100.0
    assert budget.spent() and not Budget(None).spent()


def test_the_lr_schedule_anneals_to_the_budgets_step() -> None:
    factor = LrFactor(TrainConfig(lr_schedule="cosine", epochs=100), steps_per_epoch=1000)
    factor.end_at_step(250)  # the budget ends the run inside epoch 1
    assert factor(125) == pytest.approx(0.5) and factor(250) == 0.0 and factor.finished(250)
    assert not factor.finished(249)


def test_a_long_epoch_logs_progress_with_an_eta(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    clock = FakeClock(0.0)
    monkeypatch.setattr(training.budget, "clock", clock)
    log = EpochLog(epoch=2, steps=100, enabled=True)
    clock.now += 30.0
    log.tick(10, lambda: 1.5)
    assert capsys.readouterr().err == ""  # not a minute yet
    clock.now += 30.0
    log.tick(20, lambda: 1.25)
    line = json.loads(capsys.readouterr().err)
    assert line == {"epoch": 2, "step": 20, "of": 100, "loss": 1.25, "s_per_step": 3.0, "eta_s": 240}
    EpochLog(epoch=1, steps=10, enabled=False).tick(5, lambda: 1.0)
    assert capsys.readouterr().err == ""
