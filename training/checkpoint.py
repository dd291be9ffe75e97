"""Checkpoint IO: what `seqrec train` keeps (best.pt) and how evaluate / export / serve tests read it back.

A checkpoint holds the weights, the model / train / task configs, the dataset's name and
fingerprint, the item ids and the training popularity: everything export needs, no data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.layers import SeqRecModel
from training.config import TaskConfig, TrainConfig
from training.data.preprocess import SeqData
from training.zoo import build_model

CHECKPOINT_FORMAT = 1


def save_checkpoint(
    path: Path,
    model_name: str,
    model: SeqRecModel,
    tc: TrainConfig,
    task: TaskConfig,
    data: SeqData,
    popularity: np.ndarray,
    epoch: int,
    valid: dict[str, float],
) -> None:
    """Write-then-rename: a reader never sees half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model": model_name,
            "model_config": model.cfg.to_dict(),  # type: ignore[attr-defined]
            "train_config": tc.to_dict(),
            "task_config": task.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "dataset": data.name,
            "data_fingerprint": data.fingerprint(),
            "data_meta": data.meta,  # source files + options, sessions, split: `evaluate` rebuilds from it
            "item_ids": data.item_ids,
            "type_names": data.type_names,  # typed data: what a model's type ids mean (id = position + 1)
            "popularity": popularity,
            "epoch": epoch,
            "valid": valid,
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[SeqRecModel, dict[str, Any]]:
    """(model in eval mode, the checkpoint dict). Checkpoints from before typed task configs
    kept the task settings as train_config["extra"]; they are moved to "task_config" here."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    if "task_config" not in ckpt:
        train_config = dict(ckpt.get("train_config", {}))
        ckpt["task_config"] = train_config.pop("extra", {})
        ckpt["train_config"] = train_config
    cfg = dict(ckpt["model_config"])
    num_items = cfg.pop("num_items")
    model = build_model(ckpt["model"], num_items, cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    return model, ckpt
