"""A toy model that reads event times, for the tests of the event-times contract.

Its user vector depends on the gap between the two newest events, so any misalignment of times
and items anywhere (split, padding, truncation, the ONNX feed, the store's scores, the
user-vector cache, an explanation's ablation) changes the answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.layers import SeqRecModel
from training import zoo
from training.batching import pad_left
from training.tasks import Batch, Task


@dataclass
class ToyTimeConfig:
    num_items: int
    max_len: int = 12
    dim: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


class ToyTime(SeqRecModel):
    uses_times = True

    def __init__(self, cfg: ToyTimeConfig) -> None:
        super().__init__()
        self.cfg, self.max_len, self.num_items = cfg, cfg.max_len, cfg.num_items
        self.emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)
        self.gap = nn.Linear(1, cfg.dim)

    def forward(self, item_seq: torch.Tensor, time_seq: torch.Tensor) -> torch.Tensor:
        item_seq, time_seq = item_seq[:, -self.max_len :], time_seq[:, -self.max_len :]
        # One padding column in front, so a length-1 input has a (padding) previous event.
        item_seq, time_seq = nn.functional.pad(item_seq, (1, 0)), nn.functional.pad(time_seq, (1, 0))
        x = self.emb(item_seq).sum(1)  # (B, D); padding rows are zero
        prev = item_seq[:, -2] != 0  # (B,)
        gap = ((time_seq[:, -1] - time_seq[:, -2]) * prev).float()  # (B,) seconds since the previous event
        return x + self.gap(torch.log1p(gap)[:, None])

    def item_vectors(self) -> torch.Tensor:
        return self.emb.weight


@dataclass
class ToyTimeTask(Task):
    max_len: int = 12
    seen_times: list[int] | None = None  # rows of `times` the trainer passed, to check alignment

    def batches(  # type: ignore[override]
        self,
        train: Sequence[np.ndarray],
        batch_size: int,
        rng: np.random.Generator,
        device: torch.device,
        times: Sequence[np.ndarray] | None = None,
    ) -> Iterator[Batch]:
        assert times is not None and len(times) == len(train)
        assert all(len(s) == len(t) for s, t in zip(train, times, strict=True))
        self.seen_times = [len(times)]
        rows = [i for i, s in enumerate(train) if len(s) >= 2]
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            yield {
                "item_seq": torch.as_tensor(pad_left([train[i][:-1][-self.max_len :] for i in idx]), device=device),
                "time_seq": torch.as_tensor(pad_left([times[i][:-1][-self.max_len :] for i in idx]), device=device),
                "target": torch.as_tensor([int(train[i][-1]) for i in idx], device=device),
            }

    def loss(self, model: SeqRecModel, batch: Batch) -> torch.Tensor:
        scores = model.score(batch["item_seq"], batch["time_seq"])
        return nn.functional.cross_entropy(scores, batch["target"])


def register_toy(monkeypatch: pytest.MonkeyPatch) -> zoo.ModelSpec:
    """Add the toy to the model registry for one test (monkeypatch undoes it)."""
    spec = zoo.ModelSpec(
        name="toytime",
        config_cls=ToyTimeConfig,
        model_cls=ToyTime,
        make_task=lambda cfg, tc, task_cfg, pop: ToyTimeTask(max_len=cfg.max_len),
    )
    monkeypatch.setitem(zoo.MODELS, "toytime", spec)
    return spec


def toy_bundle(data, tmp: Path, name: str = "toy") -> tuple[Path, Path]:
    """Train the toy one epoch on `data` and export it: (bundle dir, checkpoint). Needs register_toy."""
    from training.export import export_bundle
    from training.train import train

    res = train("toytime", data, tmp / f"run-{name}", train_overrides={"epochs": 1}, progress=False)
    return export_bundle(res.run_dir / "best.pt", tmp / "art", name=name, program=False), res.run_dir / "best.pt"
