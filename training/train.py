"""The shared training loop: batches, AdamW steps, clipping, early stopping on validation NDCG@10.

`train()` is the loop, short: `Trainer.setup` builds the run (settings and data, the model, the
task and optimiser, what batches read, the run directory), `Trainer.epoch` runs one epoch's steps
(training/loop.py's, shared with UniSRec pre-training), `Trainer.validate_and_keep` selects the
best epoch and `Trainer.judge` tests the best checkpoint once. The optimiser, weight average and
learning-rate policy are in training/optim.py, checkpoint IO in training/checkpoint.py, what the
run directory holds in training/rundir.py, when to stop in training/budget.py, the options in
training/config.py.

SIGINT/SIGTERM and the wall-clock budget stop training at the next step (under torchrun within a
few steps), mid-epoch too, and still write final.json; the epoch cut short is evaluated and kept
when it is the best (training/budget.py).

Runs under `torchrun` with DistributedDataParallel: each rank trains on its shard of
users, rank 0 evaluates and writes.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from models.layers import SeqRecModel
from training import budget as budget_mod
from training.budget import StopRequest
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig, describe_loss, resolve_loss
from training.data.preprocess import SeqData, Split, leave_one_out
from training.evaluate import full_rank_eval, popularity_scores
from training.loop import Epoch, Optimisation, TaskLoss, run_epoch
from training.optim import adamw, budget_last_epoch, lr_scheduler, weight_average
from training.rundir import RunDir
from training.tasks import reads_types, type_batch_kwargs
from training.zoo import build_model, get_spec, reads_times, resolve, time_eval_kwargs

__all__ = [  # the names callers import from here (the loop's helpers live in optim / checkpoint)
    "TrainResult",
    "budget_last_epoch",
    "load_checkpoint",
    "lr_scheduler",
    "save_checkpoint",
    "subset_split",
    "train",
]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of unmapping it (False where not glibc).

    Every step allocates gradients the size of the item table and frees them; glibc serves
    allocations that large with mmap and gives them back on free, so each step page-faults
    them in again. At a million items (256 MB per table gradient) that was a third of a
    sampled-softmax step on a CPU (benchmarks/scale/train_step.py); from the heap they are reused.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters (malloc.h)
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subset_split(split: Split, max_users: int | None) -> Split:
    return split.subset(max_users) if max_users else split


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    seconds: float
    stop_reason: str = "epochs"  # epochs, early_stop, max_minutes, annealed, SIGINT or SIGTERM


def _is_tty() -> bool:
    return sys.stderr.isatty()


def _ddp() -> tuple[int, int, bool]:
    """(rank, world, whether this call created the process group) when launched by torchrun, else
    (0, 1, False). A group the caller made (several runs in one launch) is the caller's to end."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        made = not dist.is_initialized()
        if made:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), made
    return 0, 1, False


def _in_step(batches: Any, world: int, device: torch.device) -> Any:
    """Under DDP every rank takes the same number of steps (each backward is a collective): all
    stop as soon as one runs out of batches (GRU4Rec's session-parallel batches end at a different
    step on each shard of users)."""
    if world == 1:
        yield from batches
        return
    for batch in itertools.chain(batches, [None]):
        more = torch.tensor([0 if batch is None else 1], device=device)
        dist.all_reduce(more, op=dist.ReduceOp.MIN)
        if not int(more.item()):
            return
        yield batch


def _ddp_finish(world: int, made: bool) -> None:
    """Every rank waits for rank 0's final evaluation, then tears down the group train() made: a
    rank that exits with the group alive can abort in gloo's teardown ("terminate called...")."""
    if world > 1 and dist.is_initialized():
        dist.barrier()
        if made:
            dist.destroy_process_group()


def evaluate_model(
    model: SeqRecModel,
    hists: list[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    tc: TrainConfig,
    device: torch.device,
    exclude_history: bool = True,
    timed: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Full-ranking metrics; `timed` = zoo.time_eval_kwargs(...) for a run that reads event times.

    A model that scores as user vector x item table (SeqRecModel.score) is ranked against its
    table a block of items at a time, so evaluation memory does not grow with the catalogue.
    """
    model.eval()
    factored = type(model).score is SeqRecModel.score
    amp = tc.amp and device.type == "cuda"
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        return full_rank_eval(  # type: ignore[return-value]
            model if factored else model.score,
            hists,
            targets,
            num_items,
            model.max_len,
            tc.eval_batch_size,
            exclude_history=exclude_history,
            device=device,
            item_table=model.item_vectors() if factored else None,
            **(timed or {}),
        )


@dataclass
class Trainer:
    """Everything one run holds once set up: what train()'s loop reads, built by Trainer.setup."""

    model_name: str
    data: SeqData
    split: Split
    split_given: bool
    exclude_history: bool
    tc: TrainConfig
    task_cfg: Any
    rank: int
    world: int
    made_group: bool  # train() made the process group, so it ends it
    device: torch.device
    progress: bool
    popularity: np.ndarray
    model: SeqRecModel
    kept: SeqRecModel  # what is validated, selected and kept: the weight average when there is one
    task: Any
    steps: Optimisation  # holds the optimiser and the lr schedule
    train_seqs: list[np.ndarray]
    batch_kw: dict[str, Any]
    valid_timed: dict[str, Any]
    test_timed: dict[str, Any]
    rng: np.random.Generator
    budget: budget_mod.Budget
    run: RunDir
    run_dir: Path
    warm: str | None
    t0: float

    @classmethod
    def setup(
        cls,
        model_name: str,
        data: SeqData,
        run_dir: Path,
        overrides: tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None],
        progress: bool | None,
        split: Split | None,
        exclude_history: bool,
        init: Path | None,
    ) -> Trainer:
        # --- settings, process, data
        spec = get_spec(model_name)
        model_overrides, tc, task_cfg = resolve(model_name, *overrides)
        rank, world, made_group = _ddp()
        device = resolve_device(tc.device)
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        seed_everything(tc.seed)
        keep_freed_memory()
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        split_given = split is not None
        split = subset_split(split if split is not None else leave_one_out(data), tc.max_users)
        popularity = popularity_scores(split.train, data.num_items)

        # --- the model (the budget starts here: a setup's one-off work, UniSRec's text encoding, counts)
        warm = None
        if init is not None:
            from training import warm_start

            source = warm_start.load_source(init)  # the source's architecture unless overridden
            model_overrides = warm_start.model_overrides(source, model_name, model_overrides)
        model = build_model(model_name, data.num_items, model_overrides)
        t0 = time.perf_counter()
        budget = budget_mod.Budget(tc.max_minutes)
        if spec.setup is not None:
            spec.setup(model, data, tc, task_cfg)
        if init is not None:
            warm = warm_start.apply(model, model_name, source, data.item_ids).summary()
            if rank == 0:
                print(warm, file=sys.stderr, flush=True)
        model = model.to(device)

        # --- the task, the optimiser, the schedule
        task = spec.make_task(model.cfg, tc, task_cfg, popularity)  # type: ignore[attr-defined]
        chosen = describe_loss(tc, task_cfg, data.num_items)  # loss "auto": what the catalogue's size chose
        if chosen and rank == 0:
            print(chosen, file=sys.stderr, flush=True)
        net: torch.nn.Module = TaskLoss(model, task)
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net)
        trainable = [p for p in model.parameters() if p.requires_grad]  # a setup may freeze some
        opt = adamw(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
        train_seqs = split.train[rank::world]
        sched = lr_scheduler(opt, tc, task.num_batches(train_seqs, tc.batch_size))
        ema = weight_average(model, tc.ema)
        amp = tc.amp and (device.type == "cuda" or tc.amp_cpu)
        steps = Optimisation(net, opt, trainable, tc.grad_clip, sched, ema, model, amp, device)

        # --- what a batch reads besides items (event times: checked here, before any training)
        timed = reads_times(model_name, model, task_cfg)
        valid_timed = time_eval_kwargs(model_name, model, task_cfg, split.valid_times, data.name)
        test_timed = time_eval_kwargs(model_name, model, task_cfg, split.test_times, data.name)
        train_times = split.train_times[rank::world] if timed and split.train_times is not None else None
        batch_kw: dict[str, Any] = {"times": train_times} if timed else {}
        if split.train_targets is not None:  # event types: some positions are input only
            batch_kw["target_masks"] = split.train_targets[rank::world]
        batch_kw.update(type_batch_kwargs(model, task_cfg, split, rank, world))  # the types a model reads, weights
        if reads_types(model):  # and its evaluation reads them too
            valid_timed, test_timed = (
                {**valid_timed, "types": split.valid_types},
                {**test_timed, "types": split.test_types},
            )

        run = RunDir(run_dir, writes=rank == 0)
        run.config(
            {
                "model": model_name,
                "model_config": model.cfg.to_dict(),
                "train_config": tc.to_dict(),
                "task_config": task_cfg.to_dict(),
                "loss": resolve_loss(tc, task_cfg, data.num_items)[0].loss,  # what loss "auto" became
                "dataset": data.stats(),
                "data_fingerprint": data.fingerprint(),
            }
        )
        return cls(
            model_name=model_name,
            data=data,
            split=split,
            split_given=split_given,
            exclude_history=exclude_history,
            tc=tc,
            task_cfg=task_cfg,
            rank=rank,
            world=world,
            made_group=made_group,
            device=device,
            progress=_is_tty() if progress is None else progress,
            popularity=popularity,
            model=model,
            kept=ema.module if ema is not None else model,  # type: ignore[arg-type]
            task=task,
            steps=steps,
            train_seqs=train_seqs,
            batch_kw=batch_kw,
            valid_timed=valid_timed,
            test_timed=test_timed,
            rng=np.random.default_rng(tc.seed + rank),
            budget=budget,
            run=run,
            run_dir=run_dir,
            warm=warm,
            t0=t0,
        )

    @property
    def sched(self) -> torch.optim.lr_scheduler.LRScheduler:
        assert self.steps.sched is not None  # setup always makes one
        return self.steps.sched

    def epoch(self, epoch: int, after_step: Any) -> Epoch:
        """One epoch's steps (training/loop.py), stopped early by `after_step`."""
        self.model.train()
        tc = self.tc
        n_batches = self.task.num_batches(self.train_seqs, tc.batch_size)
        drawn = self.task.batches(self.train_seqs, tc.batch_size, self.rng, self.device, **self.batch_kw)
        shown = self.progress and self.rank == 0
        return run_epoch(
            self.steps, _in_step(drawn, self.world, self.device), n_batches, epoch, after_step, shown, self.rank == 0
        )

    def evaluate(self, m: SeqRecModel, on: str = "valid") -> dict[str, float]:
        """Full-ranking metrics of `m` on the validation or the test queries."""
        s = self.split
        hists, targets = (s.valid_hist, s.valid_target) if on == "valid" else (s.test_hist, s.test_target)
        timed = self.valid_timed if on == "valid" else self.test_timed
        return evaluate_model(m, hists, targets, self.data.num_items, self.tc, self.device, self.exclude_history, timed)

    def validate_and_keep(self, epoch: int, best: Best, row: dict[str, Any]) -> bool:
        """Validate the epoch into `row`, checkpoint it if the best; True when patience has run out."""
        valid = self.evaluate(self.kept)
        row.update({f"valid_{k}": v for k, v in valid.items() if k != "users"})
        if self.kept is not self.model:  # the raw weights' score beside the average's: what it bought
            raw = self.evaluate(self.model)
            row.update({"raw_valid_ndcg@10": raw["ndcg@10"], "raw_valid_hr@10": raw["hr@10"]})
        if best.improves(valid["ndcg@10"], epoch):
            save_checkpoint(
                self.run_dir / "best.pt",
                self.model_name,
                self.kept,
                self.tc,
                self.task_cfg,
                self.data,
                self.popularity,
                epoch,
                valid,
            )
            return False
        return best.bad_evals >= self.tc.patience

    def judge(self, best: Best, stop_reason: str) -> TrainResult:
        """The best checkpoint, judged once on test (rank 0), and final.json."""
        seconds = time.perf_counter() - self.t0
        if self.rank != 0:
            _ddp_finish(self.world, self.made_group)
            return TrainResult(self.run_dir, best.epoch, {}, {}, seconds)
        best_model, _ = load_checkpoint(self.run_dir / "best.pt", self.device)
        valid, test = self.evaluate(best_model), self.evaluate(best_model, on="test")
        self.run.final(
            {
                "model": self.model_name,
                "dataset": self.data.name,
                "best_epoch": best.epoch,
                "train_seconds": round(seconds, 2),
                "seconds_to_best": self.run.row_of(best.epoch).get("elapsed_seconds"),
                "valid": valid,
                "test": test,
                "device": str(self.device),
                "epochs_run": len(self.run.history),
                "stop_reason": stop_reason,
                "protocol": "leave-one-out" if self.split_given is False else "custom split",
                "exclude_history": self.exclude_history,
                "warm_start": self.warm,
            }
        )
        _ddp_finish(self.world, self.made_group)
        return TrainResult(self.run_dir, best.epoch, valid, test, seconds, stop_reason)


def train(
    model_name: str,
    data: SeqData,
    run_dir: Path,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    progress: bool | None = None,
    split: Split | None = None,
    exclude_history: bool = True,
    task_overrides: dict[str, Any] | None = None,
    init: Path | None = None,
) -> TrainResult:
    """Train `model_name` on `data` into `run_dir`.

    The overrides are the [model], [train] and [task] tables of a recipe (training/config.py),
    checked against the dataclasses. `split` replaces the leave-one-out split (e.g.
    next-item-in-session, training/sessions.py); `exclude_history=False` ranks already-seen
    items too (the session-based protocol); `init` warm-starts from a bundle or checkpoint
    (training/warm_start.py).
    """
    overrides = (model_overrides, train_overrides, task_overrides)
    t = Trainer.setup(model_name, data, run_dir, overrides, progress, split, exclude_history, init)
    tc, best, stop_reason = t.tc, Best(), "epochs"
    with StopRequest() as request:
        stopping = budget_mod.Stopping(request, t.budget, t.sched, t.world, t.device)
        for epoch in range(1, tc.epochs + 1):
            ep = t.epoch(epoch, stopping.after_step)
            lr = t.steps.opt.param_groups[0]["lr"]
            row: dict[str, Any] = {"epoch": epoch, "loss": ep.loss, "epoch_seconds": round(ep.seconds, 3), "lr": lr}
            row["steps"] = ep.steps
            halt = ep.halt
            if ep.partial:  # cut short: evaluated below, kept if the best
                row["partial"] = True
            elif halt is None:
                halt = stopping.now(last_planned=epoch == tc.epochs)
            # The epoch training stops after is always evaluated: with a decaying lr it is the best.
            stop = halt is not None
            if (
                t.rank == 0
                and (epoch % tc.eval_every == 0 or epoch == tc.epochs or stop)
                and t.validate_and_keep(epoch, best, row)
            ):
                stop, stop_reason = True, "early_stop"
            row["elapsed_seconds"] = round(time.perf_counter() - t.t0, 3)
            t.run.epoch(row, last=stop or epoch == tc.epochs, echo=not t.progress)
            if halt is not None:
                stop_reason = halt
            if stopping.agree("stop" if stop else None, t.budget.last_step(t.sched.last_epoch, force=True)):
                break
    return t.judge(best, stop_reason)


class Best:
    """Model selection on validation NDCG@10: the best epoch so far and the evaluations since it."""

    def __init__(self) -> None:
        self.score, self.epoch, self.bad_evals = -1.0, 0, 0

    def improves(self, score: float, epoch: int) -> bool:
        if score > self.score:
            self.score, self.epoch, self.bad_evals = score, epoch, 0
            return True
        self.bad_evals += 1
        return False
