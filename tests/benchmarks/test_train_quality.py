import sys

import pytest

from benchmarks.training.train_quality import main, time_to_target

# Three epochs as metrics.jsonl holds them: epoch 2 was not evaluated (eval_every).
ROWS = [
    {"epoch": 1, "epoch_seconds": 2.0, "valid_ndcg@10": 0.10, "elapsed_seconds": 2.5},
    {"epoch": 2, "epoch_seconds": 2.0, "elapsed_seconds": 4.6},
    {"epoch": 3, "epoch_seconds": 1.5, "valid_ndcg@10": 0.18, "elapsed_seconds": 6.8},
]


def test_time_to_target_counts_training_seconds_up_to_the_first_epoch_that_reaches_it() -> None:
    hit = time_to_target(ROWS, 0.18)
    assert hit == {"target": 0.18, "epoch": 3, "valid_ndcg@10": 0.18, "train_seconds": 5.5, "wall_seconds": 6.8}
    assert time_to_target(ROWS, 0.05)["epoch"] == 1


def test_time_to_target_is_none_when_never_reached() -> None:
    assert time_to_target(ROWS, 0.181) is None
    assert time_to_target([], 0.1) is None


def test_the_benchmark_shares_the_cli_override_grammar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In process (what `python -m benchmarks.training.train_quality` runs is main()): a subprocess
    # per case cost 5 s of imports each.
    for args, msg in (
        (["--set", "train.mask_prb=1"], "valid: amp"),
        (["--set", "lr=1"], "TABLE.KEY=VALUE"),
        (["--recipe", "recipes/no-such.toml"], "recipe not found"),
    ):
        monkeypatch.setattr(sys, "argv", ["train_quality", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and msg in err, err
