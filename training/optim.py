"""Optimiser, weight averaging, learning-rate policy and the wall-clock budget of the training loop."""

from __future__ import annotations

import math
from typing import Any

import torch

from models.layers import SeqRecModel
from training.config import TrainConfig


def adamw(params: list[torch.nn.Parameter], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused (one kernel per tensor instead of ~10 passes over it) wherever torch has the
    fused kernel: with a large item table the optimiser step is memory-bound, and on Beauty's
    54k x 64 table the fused step is ~5x faster on one CPU core (benchmarks/training/sampled_step.py)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, fused=fused, **kwargs)


def weight_average(model: SeqRecModel, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of `model`'s weights (buffers too), or None when decay is 0."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {decay}")
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


class LrFactor:
    """Per-step learning-rate factor: linear warm-up, then constant, cosine decay to 0, or
    "wsd": constant, then a linear decay to 0 over the final `decay_fraction` of the steps
    (warm-up-stable-decay: the peak lr for most of the run, annealed only at its end).

    The decay ends at `tc.epochs`, or earlier when the wall-clock budget (`tc.max_minutes`) will
    stop training first: `end_at_epoch` moves the end once the epoch rate is known, so a budgeted
    run anneals instead of stopping at its peak learning rate.
    """

    def __init__(self, tc: TrainConfig, steps_per_epoch: int) -> None:
        if tc.lr_schedule not in ("constant", "cosine", "wsd"):
            raise ValueError(f"unknown lr_schedule {tc.lr_schedule!r}: choose constant, cosine or wsd")
        if not 0 < tc.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {tc.decay_fraction}")
        self.schedule = tc.lr_schedule
        self.decay_fraction = tc.decay_fraction
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.warmup = max(int(tc.warmup_epochs * steps_per_epoch), 0)
        self.planned = max(tc.epochs * steps_per_epoch, self.warmup + 1)
        self.total = self.planned

    def end_at_epoch(self, epoch: int) -> None:
        """Decay to 0 at the end of `epoch` instead (re-estimated every epoch, so either way;
        never past `tc.epochs`, never inside the warm-up)."""
        self.end_at_step(epoch * self.steps_per_epoch)

    def end_at_step(self, step: int) -> None:
        """Decay to 0 at `step` instead (the budget's end, re-estimated as the run goes)."""
        self.total = min(self.planned, max(step, self.warmup + 1))

    def finished(self, step: int) -> bool:
        """A decaying schedule whose lr is 0 from `step` on: more steps cannot change the weights."""
        return self.schedule != "constant" and step >= self.total  # total > warmup by construction

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        span = self.total - self.warmup
        t = min(step - self.warmup, span)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / span))
        return min(1.0, (span - t) / max(self.decay_fraction * span, 1.0))  # wsd


def budget_last_epoch(elapsed_s: float, epochs_done: int, max_minutes: float) -> int:
    """The epoch a `max_minutes` budget will stop after, at the pace so far (evaluations included).

    Training stops after the epoch that crosses the budget, hence the ceiling.
    """
    per_epoch = elapsed_s / max(epochs_done, 1)
    return max(math.ceil(max_minutes * 60 / max(per_epoch, 1e-9)), epochs_done + 1)


def budget_last_step(elapsed_s: float, steps_done: int, max_minutes: float) -> int:
    """The step a `max_minutes` budget will stop at, at the pace so far (evaluations included)."""
    per_step = elapsed_s / max(steps_done, 1)
    return max(math.ceil(max_minutes * 60 / max(per_step, 1e-9)), steps_done + 1)


def lr_scheduler(
    opt: torch.optim.Optimizer, tc: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over an `LrFactor` (reachable as `.lr_lambdas[0]` to move the cosine's end)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, LrFactor(tc, steps_per_epoch))
