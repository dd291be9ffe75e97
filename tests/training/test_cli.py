from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", ["prepare", "train", "evaluate", "export", "pretrain", "serve", "demo"])
def test_every_command_has_help(cmd: str) -> None:
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0
    assert "Usage" in r.output


def test_every_train_option_is_documented() -> None:
    import re

    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERM": "dumb"}).output
    opts = re.findall(r"(--[a-z][a-z-]+)\s+(\S.*)", out)
    assert len(opts) > 15
    assert all(text.strip() for _, text in opts)


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    r = runner.invoke(app, ["prepare", "beauty", "--data-dir", str(tmp_path), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2
    assert "missing" in r.output or "not found" in r.output
    assert "Traceback" not in r.output


def test_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "events.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,i1,notatime\n")
    r = runner.invoke(app, ["prepare", "--file", str(bad), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2 and "events.csv" in r.output


def test_prepare_prints_stats(data_dir: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["prepare", "ml-100k", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert '"users": 943' in r.output


def test_demo_without_the_data_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "data" / "ml-1m").mkdir(parents=True)  # present but empty: nothing is downloaded
    r = runner.invoke(app, ["demo", "--data-dir", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2
    assert "seqrec download ml-1m" in r.output and "SEQREC_DATA_DIR" in r.output
