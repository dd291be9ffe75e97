"""The optimisation steps of one epoch, shared by `seqrec train` (training/train.py) and UniSRec's
multi-domain pre-training (training/unisrec.py `pretrain`).

A step is: the batch's loss (the task's, through `TaskLoss`), backward, clip, optimiser step, lr
schedule, weight average. What surrounds an epoch (validation, checkpoints, the run directory)
is the caller's; when to stop is asked of the caller after every step (`check`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from training import budget as budget_mod


class TaskLoss(nn.Module):
    """model + task as one module whose forward is the loss, so DDP can wrap it."""

    def __init__(self, model: nn.Module, task: Any) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any) -> torch.Tensor:
        return self.task.loss(self.model, batch)


@dataclass
class Optimisation:
    """What one step updates, and how."""

    net: nn.Module  # forward(batch) -> scalar loss (a TaskLoss, or DDP around one)
    opt: torch.optim.Optimizer
    params: list[nn.Parameter]  # the trainable parameters (clipped)
    grad_clip: float = 0.0
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    model: nn.Module | None = None  # what `ema` averages
    amp: bool = False  # bfloat16 autocast of the forward
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def step(self, batch: Any) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.net(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss.detach().float()


@dataclass
class Epoch:
    """What one epoch of steps did."""

    loss: float  # mean over its steps
    steps: int
    planned: int  # the steps a whole epoch has
    seconds: float
    halt: str | None  # why it stopped early (a signal, the budget, ...), or None

    @property
    def partial(self) -> bool:
        return self.halt is not None and self.steps < self.planned


def run_epoch(
    optimisation: Optimisation,
    batches: Iterable[Any],
    planned: int,
    epoch: int,
    check: Callable[[int, int], str | None],
    progress: bool = False,
    log: bool = True,
) -> Epoch:
    """Step through `batches` (`planned` of them in a whole epoch). After every step `check(steps
    so far, planned)` says why to stop now, or None. `progress`: a bar (a terminal); `log`: a line a minute."""
    t0 = time.perf_counter()
    # Summed on the device: reading the loss every step would sync a GPU each step and keep the
    # host from queueing the next one (the progress bar reads it every 25th).
    total, count = torch.zeros((), device=optimisation.device), 0
    bar = tqdm(batches, total=planned, desc=f"epoch {epoch}", disable=not progress, leave=False)
    lines = budget_mod.EpochLog(epoch, planned, enabled=log and not progress)
    halt = None
    for batch in bar:
        total += optimisation.step(batch)
        count += 1
        if not bar.disable and count % 25 == 1:
            bar.set_postfix(loss=f"{float(total) / count:.4f}")
        lines.tick(count, lambda: float(total) / count)  # noqa: B023  # called right here
        halt = check(count, planned)
        if halt is not None:
            break
    bar.close()
    mean = float(total) / max(count, 1)  # a device read: the epoch's queued work is done
    return Epoch(mean, count, planned, time.perf_counter() - t0, halt)
