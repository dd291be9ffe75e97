"""A training run's options from their layers, and the split a `--sessions` run uses.

Lowest first: the model's defaults, the recipe file, the architecture of a warm-start source (a
bundle or checkpoint), the command-line flags, then `--set TABLE.KEY=VALUE`. One function does the
layering, so `seqrec train`, the tests and any script that starts a run resolve options alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import ConfigError, Recipe, TrainConfig, merge_tables, parse_overrides, split_model_table
from training.data import DatasetError, SeqData, Split

DEFAULT_MODEL = "sasrec"
DEFAULT_DATASET = "ml-1m"
SESSION_RULES = ("column", "gap", "largest-gap", "user-gap")


class PlanError(ValueError):
    """The options of a run do not add up (message names the option)."""


@dataclass
class RunPlan:
    model: str
    model_overrides: dict[str, Any]
    train: TrainConfig
    task: Any  # the model's task config (training.zoo)
    warm_from: Path | None  # a bundle or checkpoint whose weights start the run
    recipe: Recipe | None

    def data_source(self, dataset: str | None, file: list[Path] | None) -> tuple[str, list[Path] | None]:
        """The dataset name and files: the flags', else the recipe's, else the default dataset."""
        if file is None and dataset is None and self.recipe is not None and self.recipe.file:
            file = [Path(self.recipe.file)]
        return dataset or (self.recipe.dataset if self.recipe is not None else None) or DEFAULT_DATASET, file


def plan_run(
    recipe: Path | None = None,
    init: Path | None = None,
    model: str | None = None,
    model_flags: dict[str, Any] | None = None,
    train_flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunPlan:
    """Resolve a run's model, train and task options; flags that are None were not given."""
    from training.warm_start import WarmStartError, is_warm_start_source, load_source
    from training.zoo import resolve

    layers: list[dict[str, dict[str, Any]]] = []
    rec = None
    try:
        if recipe is not None:
            rec = Recipe.load(recipe)
            layers.append(rec.tables)
        warm_from = None
        if init is not None:
            if is_warm_start_source(init):
                warm_from = init  # its architecture (and kind) unless a later layer overrides it
                src = load_source(init)
                cfg = {k: v for k, v in src.model_config.items() if k != "num_items"}
                layers.append({"model": {"name": src.kind, **cfg}, "train": {}, "task": {}})
            elif not init.exists():
                raise PlanError(f"{init}: not found (neither a bundle directory nor a checkpoint file)")
        layers.append(
            {
                "model": {k: v for k, v in (model_flags or {}).items() if v is not None}
                | ({"name": model} if model else {}),
                "train": {k: v for k, v in (train_flags or {}).items() if v is not None},
                # Not a warm-start source: a UniSRec pre-training checkpoint (task.init).
                "task": {"init": str(init)} if init is not None and warm_from is None else {},
            }
        )
        layers.append(parse_overrides(sets or []))
        tables = merge_tables(*layers)
        name, model_over = split_model_table(tables["model"])
        name = name or DEFAULT_MODEL
        model_over, tc, task_cfg = resolve(name, model_over, tables["train"], tables["task"])
    except (ConfigError, WarmStartError) as exc:
        raise PlanError(str(exc)) from None
    init_path = getattr(task_cfg, "init", None)
    if init_path is not None and not Path(init_path).is_file():
        raise PlanError(f"{init_path}: pre-trained checkpoint not found")
    return RunPlan(name, model_over, tc, task_cfg, warm_from, rec)


def session_data(data: SeqData, rule: str, history: str, gap_s: int, test_frac: float) -> tuple[SeqData, Split]:
    """The data and split of a next-item-in-session run (`seqrec train --sessions RULE`)."""
    from training.hrnn import HISTORIES, user_session_protocol
    from training.sessions import session_protocol

    if rule not in SESSION_RULES:
        raise PlanError(f"--sessions must be {', '.join(SESSION_RULES[:-1])} or {SESSION_RULES[-1]}")
    if history not in HISTORIES:
        raise PlanError(f"--session-history must be one of {', '.join(HISTORIES)}")
    try:
        if rule == "user-gap":
            return user_session_protocol(data, gap_s, history)
        return session_protocol(data, rule, gap_s, test_frac)
    except DatasetError as exc:
        raise PlanError(str(exc)) from None
