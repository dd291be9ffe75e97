"""When training stops between two steps, and what a long epoch prints while it runs.

A run stops at the first of: a signal (SIGINT/SIGTERM), the wall-clock budget
(`train.max_minutes`) spent, or a decaying learning rate annealed to 0. One process checks all
three after every step (a clock read), not only at the end of an epoch: at a million items an
epoch can last hours. The epoch cut short is evaluated like any other and kept when it is the
best (training/train.py). Under torchrun rank 0 decides every DDP_CHECK_STEPS steps.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

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

    def elapsed(self) -> float:
        return clock() - self.t0

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


class StopRequest:
    """SIGINT/SIGTERM ask training to stop after the current step and finish normally (the partial
    epoch evaluated, best checkpoint evaluated on test, final.json written); a second signal aborts as usual.

    A no-op outside the main thread, where Python cannot install signal handlers.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:  # the second time: abort as the default handler would
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: stopping after this step (send again to abort)", file=sys.stderr, flush=True)


# What rank 0 broadcasts to stop every replica (by index): no stop, a reason, "stop" at an epoch's end.
HALTS: tuple[str | None, ...] = (None, "SIGINT", "SIGTERM", "max_minutes", "annealed", "stop")


class Stopping:
    """The stop decision of a run: one process checks after every step; DDP replicas every
    DDP_CHECK_STEPS steps, rank 0 deciding through a broadcast (safe mid-epoch: every rank takes
    the same steps). The step where the budget will end is handed to the lr schedule as it moves."""

    def __init__(self, request: StopRequest, budget: Budget, sched: Any, world: int, device: Any) -> None:
        self.request, self.budget, self.sched, self.world, self.device = request, budget, sched, world, device
        self.lr_factor: LrFactor = sched.lr_lambdas[0]
        self.every = 1 if world == 1 else DDP_CHECK_STEPS

    def now(self, last_planned: bool) -> str | None:
        return halt_reason(self.request.signal, self.budget, self.lr_factor, self.sched.last_epoch, last_planned)

    def agree(self, halt: str | None, last_step: int) -> str | None:
        """Rank 0's decision (why it stops, or None; where the budget ends the lr schedule) on every rank, applied."""
        if self.world > 1:
            import torch
            import torch.distributed as dist

            flags = torch.tensor([HALTS.index(halt), last_step], device=self.device)
            dist.broadcast(flags, 0)
            halt, last_step = HALTS[int(flags[0].item())], int(flags[1].item())
        if last_step:
            self.lr_factor.end_at_step(last_step)
        return halt

    def after_step(self, count: int, planned: int) -> str | None:
        """After step `count` of `planned`; one process judges an epoch's last step at its end."""
        if count % self.every or (self.world == 1 and count >= planned):
            return None
        return self.agree(self.now(last_planned=False), self.budget.last_step(self.sched.last_epoch))
