"""Typed training configuration and per-model defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    loss: str = "ce"
    num_negatives: int = 1
    patience: int = 10  # evaluations without validation NDCG@10 improvement before stopping
    eval_every: int = 1
    eval_batch_size: int = 1024
    seed: int = 42
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    # bf16 autocast on CPU as well: ~1.7x faster epochs where the CPU has AVX512-BF16/AMX
    # (softmax and the loss stay fp32 under autocast). Off by default: slower on older CPUs.
    amp_cpu: bool = False
    # "constant"; "wsd" (see decay_fraction); or "cosine": linear warm-up over `warmup_epochs`,
    # then cosine decay to 0 at `epochs`, or at the epoch where `max_minutes` will stop training
    # if that comes first (re-estimated from the pace every epoch), so a budgeted run ends annealed.
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    # "wsd" (warm-up, stable, decay): the peak lr held, then a linear decay to 0 over this final
    # fraction of the post-warm-up steps (ending where `epochs` or `max_minutes` ends the run).
    decay_fraction: float = 0.2
    bucket: bool = False  # length-bucketed batches: less padding, faster epochs (sequence tasks)
    # Long sequences: probability of training on the newest max_len window; otherwise a random
    # earlier window (data augmentation for users with more history than max_len).
    newest_prob: float = 1.0
    # Exponential moving average of the weights (Polyak averaging), updated every step; 0 = off.
    # Validation, early stopping, the checkpoint and export then use the averaged weights, which
    # smooth out the step-to-step noise of a constant learning rate. Horizon ~ 1/(1-ema) steps.
    ema: float = 0.0
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    max_users: int | None = None  # train/evaluate on the first N users only (fast tests)
    # torch intra-op threads (None = torch's default). 1 is much faster for small models on a
    # busy shared CPU: thread hand-offs under contention cost more than the ops themselves.
    num_threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific knobs (e.g. mask_prob)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **overrides: Any) -> TrainConfig:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
