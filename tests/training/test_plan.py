"""The layering of a run's options: model defaults < recipe < warm-start source < flags < --set."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.plan import DEFAULT_DATASET, PlanError, plan_run, session_data


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(
        'description = "t"\ndataset = "ml-100k"\n[model]\nname = "sasrec"\nmax_len = 30\ndim = 32\n'
        "[train]\nlr = 0.005\nbatch_size = 32\n"
    )
    return path


def test_flags_win_over_the_recipe_and_set_wins_over_the_flags(tmp_path: Path) -> None:
    plan = plan_run(
        _recipe(tmp_path),
        model_flags={"max_len": 40, "dim": None},
        train_flags={"lr": 0.002, "batch_size": None},
        sets=["train.lr=0.003", "model.num_layers=3"],
    )
    assert plan.model == "sasrec"
    assert plan.model_overrides["max_len"] == 40  # flag over recipe
    assert plan.model_overrides["dim"] == 32  # recipe, the flag not given
    assert plan.model_overrides["num_layers"] == 3  # --set
    assert plan.train.lr == 0.003 and plan.train.batch_size == 32
    assert plan.warm_from is None


def test_the_data_come_from_the_flags_then_the_recipe_then_the_default(tmp_path: Path) -> None:
    plan = plan_run(_recipe(tmp_path))
    assert plan.data_source(None, None) == ("ml-100k", None)
    assert plan.data_source("beauty", None) == ("beauty", None)
    assert plan_run().data_source(None, None) == (DEFAULT_DATASET, None)


def test_bad_layers_are_errors_that_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="nope"):
        plan_run(sets=["train.nope=1"])
    with pytest.raises(PlanError, match="not found"):
        plan_run(init=tmp_path / "missing")
    with pytest.raises(PlanError, match="--sessions must be"):
        session_data(None, "weekly", "user", 1800, 0.1)  # type: ignore[arg-type]  # refused before the data
