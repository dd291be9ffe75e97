"""When training stops between two steps, and what a long epoch prints while it runs.

A run stops at the first of: a signal (SIGINT/SIGTERM), the wall-clock budget
(`train.max_minutes`) spent, or a decaying learning rate annealed to 0. One process checks all
three after every step (a clock read), not only at the end of an epoch: at a million items an
epoch can last hours. The epoch cut short is evaluated like any other and kept when it is the
best (training/train.py). Under torchrun rank 0 decides every DDP_CHECK_STEPS steps.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from training.optim import LrFactor, budget_last_step

# The clock every budget and progress decision reads (a test replaces it to run an hour in a second).
clock: Callable[[], float] = time.perf_counter
# DDP replicas agree on stopping through a broadcast from rank 0: one every this many steps.
DDP_CHECK_STEPS = 16

# Seconds between re-estimates of the step where the budget ends the learning-rate schedule.
REESTIMATE_S = 30.0
# Seconds between progress lines in a log (stderr not a terminal; a terminal has the bar).
PROGRESS_EVERY_S = 60.0


class Budget:
    """`train.max_minutes`, counted from construction (a model's one-off setup counts)."""

    def __init__(self, max_minutes: float | None) -> None:
        self.max_minutes = max_minutes
        self.t0 = clock()
        self._estimated_at = self.t0

    def spent(self) -> bool:
        return bool(self.max_minutes) and (clock() - self.t0) / 60 > self.max_minutes  # type: ignore[operator]

    def last_step(self, steps_done: int, force: bool = False) -> int:
        """The step the budget will stop at, at the pace so far, for the lr schedule to end there;
        0 without a budget, before the first step, or (unless `force`) within REESTIMATE_S of the last estimate."""
        if not self.max_minutes or steps_done <= 0:
            return 0
        now = clock()
        if not force and now - self._estimated_at < REESTIMATE_S:
            return 0
        self._estimated_at = now
        return budget_last_step(now - self.t0, steps_done, self.max_minutes)


def halt_reason(signal: str | None, budget: Budget, lr_factor: LrFactor, step: int, last_planned: bool) -> str | None:
    """Why training stops now, or None. `step`: optimiser steps so far; `last_planned`: this is
    the run's final planned step, which ends the run as "epochs", not "annealed"."""
    if signal:
        return signal
    if budget.spent():
        return "max_minutes"
    # A schedule annealed to 0 ends the run even with budget left: further steps at lr 0 are idle.
    if not last_planned and lr_factor.finished(step):
        return "annealed"
    return None


class EpochLog:
    """A progress line every PROGRESS_EVERY_S seconds of an epoch: steps done, mean loss, ETA."""

    def __init__(self, epoch: int, steps: int, enabled: bool) -> None:
        self.epoch, self.steps, self.enabled = epoch, steps, enabled
        self.start = self.last = clock()

    def tick(self, done: int, mean_loss: Callable[[], float]) -> None:
        if not self.enabled:
            return
        now = clock()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        per_step = (now - self.start) / max(done, 1)
        line = {
            "epoch": self.epoch,
            "step": done,
            "of": self.steps,
            "loss": round(mean_loss(), 4),  # a device read, once a minute
            "s_per_step": round(per_step, 3),
            "eta_s": round(per_step * max(self.steps - done, 0)),
        }
        print(json.dumps(line), file=sys.stderr, flush=True)
