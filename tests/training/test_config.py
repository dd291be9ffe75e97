"""Options declared once: recipes load and validate, --set has one grammar, bad keys are errors."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from training.checkpoint import load_checkpoint
from training.cli import app
from training.config import (
    ClozeConfig,
    ConfigError,
    Recipe,
    TrainConfig,
    merge_tables,
    parse_overrides,
    split_model_table,
)
from training.options_doc import options_markdown
from training.zoo import MODELS, build_model, resolve

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
runner = CliRunner()


def test_parse_overrides_reads_values_as_toml() -> None:
    got = parse_overrides(
        ["train.lr=0.002", "model.num_layers=4", "task.exclude_seen=true", "model.positions=absolute"]
    )
    assert got == {
        "model": {"num_layers": 4, "positions": "absolute"},
        "train": {"lr": 0.002},
        "task": {"exclude_seen": True},
    }
    assert parse_overrides(['model.mode="inductive"'])["model"] == {"mode": "inductive"}
    for bad in ("lr=0.002", "training.lr=1", "train.lr", "train.=3"):
        with pytest.raises(ConfigError, match=r"TABLE\.KEY=VALUE"):
            parse_overrides([bad])


def test_unknown_keys_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"train\.mask_prb.*valid: .*batch_size.*lr"):
        resolve("bert4rec", None, {"mask_prb": 0.3})
    with pytest.raises(ConfigError, match=r"did you mean task\.mask_prob.*valid: .*last_item_ratio"):
        resolve("bert4rec", None, None, {"mask_prb": 0.3})
    with pytest.raises(ConfigError, match=r"train\.mask_prob is a task option of bert4rec: use task\.mask_prob"):
        resolve("bert4rec", None, {"mask_prob": 0.3})
    with pytest.raises(ConfigError, match=r"model\.num_layer\b.*did you mean model\.num_layers"):
        resolve("sasrec", {"num_layer": 4})
    with pytest.raises(ConfigError, match="mask_prob"):  # SASRec has no Cloze task
        resolve("sasrec", None, None, {"mask_prob": 0.3})


def test_values_are_type_checked() -> None:
    with pytest.raises(ConfigError, match=r"model\.dim: expected an integer"):
        resolve("sasrec", {"dim": 6.5})
    with pytest.raises(ConfigError, match=r"train\.bucket: expected true or false"):
        resolve("sasrec", None, {"bucket": "yes"})
    _, tc, task = resolve("bert4rec", None, {"lr": 1, "max_minutes": "none"}, {"mask_prob": 0.3})
    assert tc.lr == 1.0 and isinstance(tc.lr, float) and tc.max_minutes is None
    assert isinstance(task, ClozeConfig) and task.mask_prob == 0.3 and task.last_item_ratio == 0.1
    assert tc.batch_size == 32  # BERT4Rec's own training default


def test_cli_rejects_a_misspelt_key_before_loading_data(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--model", "bert4rec", "--set", "train.mask_prb=0.3", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "train.mask_prb" in r.output and "valid:" in r.output and not (tmp_path / "config.json").exists()


def test_every_train_option_is_a_cli_flag_with_its_help() -> None:
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250", "TERM": "dumb"}).output
    for f in fields(TrainConfig):
        assert f.metadata["help"], f.name
        assert f"--{f.name.replace('_', '-')}" in out, f.name


def test_flags_and_set_override_the_recipe_in_that_order(tmp_path: Path) -> None:
    rec = Recipe.load(ROOT / "recipes" / "bert4rec-ml-1m.toml")
    tables = merge_tables(rec.tables, {"train": {"lr": 0.005}}, parse_overrides(["train.lr=0.002"]))
    name, model_over = split_model_table(tables["model"])
    _, tc, task = resolve(name, model_over, tables["train"], tables["task"])
    assert name == "bert4rec" and tc.lr == 0.002 and tc.ema == 0.999 and task.exclude_seen


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_each_recipe_loads_validates_and_names_its_result(path: Path) -> None:
    rec = Recipe.load(path)
    name, model_over = split_model_table(rec.tables["model"])
    assert name in MODELS and rec.dataset and rec.description
    assert path.stem.startswith(f"{name}-") or path.stem.startswith("demo-")
    model_over, tc, task = resolve(name, model_over, rec.tables["train"], rec.tables["task"])
    build_model(name, 10, model_over)  # the model options make a model
    assert rec.result, "every recipe names the result file it reproduces"
    result_path, _, key = rec.result.partition("#")
    assert (ROOT / result_path).is_file() or path.stem.startswith("demo-"), rec.result
    if not (ROOT / result_path).is_file():
        return
    result = json.loads((ROOT / result_path).read_text())
    if key:
        assert key in result["results"], rec.result
    if "config" in result:  # the run's recorded configuration: the recipe must reproduce it exactly
        cfg = result["config"]
        assert cfg["model"] == name
        recorded_model = {k: v for k, v in cfg["model_config"].items() if k != "num_items"}
        ours = build_model(name, cfg["model_config"]["num_items"], model_over).cfg.to_dict()
        assert {k: ours[k] for k in recorded_model} == recorded_model
        recorded_train = dict(cfg["train_config"])
        recorded_task = recorded_train.pop("extra", None) or cfg.get("task_config", {})
        assert {k: tc.to_dict()[k] for k in recorded_train} == recorded_train
        assert {k: task.to_dict()[k] for k in recorded_task} == recorded_task


def test_a_recipe_with_an_unknown_table_or_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('dataset = "ml-1m"\n[trian]\nlr = 0.1\n')
    with pytest.raises(ConfigError, match=r"unknown key.*trian"):
        Recipe.load(bad)
    bad.write_text('dataset = "ml-1m"\n[model]\nname = "sasrec"\n[train]\nlr = "fast"\n')
    r = runner.invoke(app, ["train", "--recipe", str(bad)])
    assert r.exit_code == 2 and "train.lr: expected a number" in r.output


def test_docs_list_every_option_with_its_default() -> None:
    doc = (ROOT / "docs" / "recipes.md").read_text()
    assert options_markdown() in doc, "docs/recipes.md is out of date: paste `seqrec options --markdown`"


def test_a_checkpoint_with_the_old_extra_dict_still_loads(tmp_path: Path) -> None:
    model = build_model("bert4rec", 20, {"max_len": 8, "dim": 8, "num_heads": 2, "num_layers": 1})
    old = {
        "format": 1,
        "model": "bert4rec",
        "model_config": model.cfg.to_dict(),
        "train_config": {**TrainConfig().to_dict(), "extra": {"mask_prob": 0.4}},
        "state_dict": model.state_dict(),
    }
    torch.save(old, tmp_path / "old.pt")
    loaded, ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt["task_config"] == {"mask_prob": 0.4} and "extra" not in ckpt["train_config"]
    assert torch.equal(loaded.state_dict()["item_emb.weight"], model.state_dict()["item_emb.weight"])


def test_options_lists_each_table_with_per_model_defaults() -> None:
    out = runner.invoke(app, ["options", "--model", "bert4rec"]).output
    assert "[task] bert4rec (ClozeConfig)" in out and "mask_prob (float) = 0.2" in out
    assert "batch_size (int) = 128 (bert4rec: 32)" in out  # the model's own training default
    assert "head_norm (bool) = false" in out  # model options, with the comment from models/bert4rec.py
    assert runner.invoke(app, ["options", "--model", "nope"]).exit_code == 2


def test_every_recipe_the_docs_name_exists() -> None:
    import re

    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for rel in set(re.findall(r"recipes/[\w.-]+\.toml", page.read_text())):
            assert (ROOT / rel).is_file(), f"{page.name} names {rel}, which does not exist"
