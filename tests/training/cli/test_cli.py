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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sep", ","], "go with --file"),
        (["--time-unit", "ms"], "go with --file"),
        (["--user-core", "2"], "published filter"),
    ],
)
def test_a_named_dataset_refuses_the_options_of_a_file(args: list[str], says: str, tmp_path: Path) -> None:
    r = runner.invoke(app, ["prepare", "ml-100k", *args, "--cache-dir", str(tmp_path)])
    assert r.exit_code != 0 and says in r.output, r.output
    assert not any(tmp_path.iterdir())  # refused before anything is read or written


def test_prepare_prints_stats(data_dir: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["prepare", "ml-100k", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert '"users": 943' in r.output


def test_demo_without_the_data_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "data" / "ml-1m").mkdir(parents=True)  # present but empty: nothing is downloaded
    r = runner.invoke(app, ["demo", "--data-dir", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2
    assert "seqrec download ml-1m" in r.output and "SEQREC_DATA_DIR" in r.output


def test_options_help_keeps_the_table_names() -> None:
    out = runner.invoke(app, ["options", "--help"], env={"COLUMNS": "200"}).output
    assert "[model], [train] and [task]" in out


def test_recipes_are_found_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.config import Recipe

    monkeypatch.chdir(tmp_path)  # not the checkout: recipes/ is not here
    for ref in ("sasrec-office", "sasrec-office.toml", "recipes/sasrec-office.toml"):
        rec = Recipe.load(ref)
        assert rec.model == "sasrec" and rec.dataset == "office"
    r = runner.invoke(app, ["train", "--recipe", "sasrec-office", "--dataset", "no-such-data"])
    assert r.exit_code == 2 and "unknown dataset 'no-such-data'" in r.output  # the recipe itself was found
    r = runner.invoke(app, ["train", "--recipe", "sasrec-ofice"])
    assert r.exit_code == 2 and "recipe not found" in r.output and "did you mean sasrec-office?" in r.output


def test_the_session_recipe_uses_the_papers_session_setting() -> None:
    from training.config import Recipe, split_model_table
    from training.zoo import resolve

    rec = Recipe.load("gru4rec-sessions")
    name, model_over = split_model_table(rec.tables["model"])
    _, tc, task = resolve(name, model_over, rec.tables["train"], rec.tables["task"])
    assert (name, tc.loss, tc.lr, tc.batch_size) == ("gru4rec", "bpr-max", 0.003, 32)
    assert task.parallel == "session" and task.n_extra_negatives == 2048
    doc = (Path(__file__).resolve().parents[3] / "docs" / "your-own-data.md").read_text()
    assert "--recipe gru4rec-sessions" in doc and "--time-offset-col" in doc


def test_office_recipes_say_why_the_new_item_head_is_off() -> None:
    root = Path(__file__).resolve().parents[3] / "recipes"
    for path in sorted(root.glob("*office*.toml")):
        text = path.read_text()
        if "new_item_head = 0" in text:
            comments = " ".join(line for line in text.splitlines() if line.startswith("#"))
            assert "new_item_head" in comments and "POST /items" in comments, path.name


def test_api_docs_show_how_to_register_an_item() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "api.md").read_text()
    section = doc.split("## Registered items", 1)[1].split("\n## ", 1)[0]
    assert "curl" in section and "/items" in section and '"title"' in section and '"registered"' in section


def test_prepare_cuts_a_log_at_a_time_window(tmp_path: Path) -> None:
    import json

    rows = ["user_id,item_id,timestamp"]
    rows += [f"u{u},i{(u + t) % 7},{1_700_000_000 + 86400 * t}" for u in range(12) for t in range(10)]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    base = ["prepare", "--file", str(log), "--cache-dir", str(tmp_path / "c"), "--user-core", "1", "--item-core", "1"]
    whole = runner.invoke(app, [*base, "--name", "whole"])
    cut = runner.invoke(app, [*base, "--name", "cut", "--since", "1700172800", "--until", "2023-11-22"])
    assert whole.exit_code == 0 and cut.exit_code == 0, cut.output
    n_whole = json.loads(whole.stdout.strip().splitlines()[-1])["interactions"]
    n_cut = json.loads(cut.stdout.strip().splitlines()[-1])["interactions"]
    # [day 2, 2023-11-22 00:00 UTC = day 7.x): days 2..7 of every user's 10
    assert n_whole == 120 and n_cut == 12 * 6
    refused = runner.invoke(app, ["prepare", "ml-100k", "--since", "2020-01-01"])
    assert refused.exit_code == 2 and "--file" in refused.output
