"""The model registry: every trainable model, its config, its task and its defaults.

Adding a model = one entry here; the CLI, trainer, evaluator and exporter use nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.layers import SeqRecModel
from models.sasrec import SASRec, SASRecConfig
from models.unisrec import UniSRec, UniSRecConfig
from training.config import TrainConfig
from training.tasks import ContrastiveNextItemTask, NextItemTask, Task

# (model, prepared dataset, train config) -> None: fills dataset-dependent state before training
# (e.g. UniSRec's item text embeddings, a pre-trained initialisation).
SetupFn = Callable[[SeqRecModel, Any, TrainConfig], None]
# (model, bundle temp dir, checkpoint) -> extra manifest entries; writes extra bundle files.
ExportExtraFn = Callable[[SeqRecModel, Path, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: type
    model_cls: Callable[[Any], SeqRecModel]
    make_task: Callable[[Any, TrainConfig, np.ndarray], Task]  # (model config, train config, popularity)
    model_defaults: dict[str, Any] = field(default_factory=dict)
    train_defaults: TrainConfig = field(default_factory=TrainConfig)
    setup: SetupFn | None = None
    export_extra: ExportExtraFn | None = None


def _sasrec_task(cfg: SASRecConfig, tc: TrainConfig, popularity: np.ndarray) -> Task:
    pop = torch.as_tensor(popularity, dtype=torch.float) if tc.extra.get("pop_negatives") else None
    return NextItemTask(cfg.max_len, tc.loss, tc.num_negatives, pop)


def _unisrec_task(cfg: UniSRecConfig, tc: TrainConfig, popularity: np.ndarray) -> Task:
    return ContrastiveNextItemTask(cfg.max_len, temperature=cfg.temperature, candidates=torch.as_tensor(popularity > 0))


def _unisrec_setup(model: SeqRecModel, data: Any, tc: TrainConfig) -> None:
    from training.unisrec import setup_unisrec  # imports the text stack only when UniSRec is used

    setup_unisrec(model, data, tc)


def _unisrec_export(model: SeqRecModel, out: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    from training.unisrec import export_unisrec_extra

    return export_unisrec_extra(model, out, ckpt)


MODELS: dict[str, ModelSpec] = {
    "sasrec": ModelSpec(
        "sasrec",
        SASRecConfig,
        SASRec,
        _sasrec_task,
        model_defaults={"max_len": 200, "dim": 64, "num_layers": 2, "num_heads": 1, "dropout": 0.2},
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, loss="ce", patience=10),
    ),
    # Item vectors from text (PLM -> whitening MoE adaptor); mode=inductive|transductive;
    # train.init=PRETRAINED loads a `seqrec pretrain` checkpoint; train.items_file= for generic data.
    "unisrec": ModelSpec(
        "unisrec",
        UniSRecConfig,
        UniSRec,
        _unisrec_task,
        model_defaults={"max_len": 50, "dim": 64, "num_layers": 2, "num_heads": 2, "dropout": 0.5},
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, loss="ce", patience=10),
        setup=_unisrec_setup,
        export_extra=_unisrec_export,
    ),
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, num_items: int, overrides: dict[str, Any] | None = None) -> SeqRecModel:
    spec = get_spec(name)
    params = {**spec.model_defaults, **(overrides or {})}
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"{name}: unknown model option(s) {', '.join(sorted(unknown))}; known: {sorted(known)}")
    return spec.model_cls(spec.config_cls(num_items=num_items, **params))
