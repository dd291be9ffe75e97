"""The shared training loop: batches, AdamW steps, clipping, early stopping on validation NDCG@10.

The optimiser, weight average and learning-rate policy are in training/optim.py, checkpoint
IO in training/checkpoint.py, the options in training/config.py.

Writes into the run directory:
  best.pt              best checkpoint (weights, configs, item ids, popularity)
  metrics.jsonl        one JSON line per epoch (loss, time, validation metrics)
  learning_curve.png   loss and validation NDCG@10/HR@10 per epoch
  final.json           validation and test metrics of the best checkpoint, stop reason

SIGINT/SIGTERM and the wall-clock budget stop training at the next step (under torchrun within a
few steps), mid-epoch too, and still write final.json; the epoch cut short is evaluated and kept
when it is the best (training/budget.py).

Runs under `torchrun` with DistributedDataParallel: each rank trains on its shard of
users, rank 0 evaluates and writes.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from models.layers import SeqRecModel
from training import budget as budget_mod
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig, describe_loss, resolve_loss
from training.data.preprocess import SeqData, Split, leave_one_out
from training.evaluate import full_rank_eval, popularity_scores
from training.optim import LrFactor, adamw, budget_last_epoch, lr_scheduler, weight_average
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

# Seconds between learning-curve redraws (see the epoch loop).
PLOT_EVERY_S = 10.0
# What rank 0 broadcasts to stop every replica (by index): no stop, a reason, "stop" at an epoch's end.
HALTS: tuple[str | None, ...] = (None, "SIGINT", "SIGTERM", "max_minutes", "annealed", "stop")


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


def _ddp() -> tuple[int, int]:
    """(rank, world) when launched by torchrun, else (0, 1)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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


def _ddp_finish(world: int) -> None:
    """Every rank waits for rank 0's final evaluation, then tears the group down: a rank that
    exits with the group alive can abort in gloo's teardown ("terminate called...")."""
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
    spec = get_spec(model_name)
    model_overrides, tc, task_cfg = resolve(model_name, model_overrides, train_overrides, task_overrides)
    rank, world = _ddp()
    device = resolve_device(tc.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    seed_everything(tc.seed)
    keep_freed_memory()
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    progress = _is_tty() if progress is None else progress

    split_given = split is not None
    split = subset_split(split if split is not None else leave_one_out(data), tc.max_users)
    popularity = popularity_scores(split.train, data.num_items)
    warm = None
    if init is not None:
        from training import warm_start

        source = warm_start.load_source(init)  # the source's architecture unless overridden
        model_overrides = warm_start.model_overrides(source, model_name, model_overrides)
    model = build_model(model_name, data.num_items, model_overrides)
    # The budget (max_minutes) starts here: a setup's one-off work (UniSRec's item-text encoding)
    # is part of the run's time.
    t_start = time.perf_counter()
    budget = budget_mod.Budget(tc.max_minutes)
    if spec.setup is not None:
        spec.setup(model, data, tc, task_cfg)
    if init is not None:
        warm = warm_start.apply(model, model_name, source, data.item_ids).summary()
        if rank == 0:
            print(warm, file=sys.stderr, flush=True)
    model = model.to(device)
    task = spec.make_task(model.cfg, tc, task_cfg, popularity)  # type: ignore[attr-defined]
    chosen = describe_loss(tc, task_cfg, data.num_items)  # loss "auto": what the catalogue's size chose
    if chosen and rank == 0:
        print(chosen, file=sys.stderr, flush=True)
    net: torch.nn.Module = TaskLoss(model, task)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    trainable = [p for p in model.parameters() if p.requires_grad]  # a setup may freeze some
    opt = adamw(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
    rng = np.random.default_rng(tc.seed + rank)
    train_seqs = split.train[rank::world]
    sched = lr_scheduler(opt, tc, task.num_batches(train_seqs, tc.batch_size))
    lr_factor: LrFactor = sched.lr_lambdas[0]  # type: ignore[assignment]  # moved by the budget
    use_amp = tc.amp and (device.type == "cuda" or tc.amp_cpu)
    ema = weight_average(model, tc.ema)
    # With an average, it is what gets validated, selected and kept; the raw weights' score is
    # logged beside it so one run shows what the average bought.
    kept: SeqRecModel = ema.module if ema is not None else model  # type: ignore[assignment]

    # Event times: checked here, before any training, when the model or a history transform reads them.
    timed = reads_times(model_name, model, task_cfg)
    valid_timed = time_eval_kwargs(model_name, model, task_cfg, split.valid_times, data.name)
    test_timed = time_eval_kwargs(model_name, model, task_cfg, split.test_times, data.name)
    train_times = split.train_times[rank::world] if timed and split.train_times is not None else None
    time_kw = {"times": train_times} if timed else {}
    if split.train_targets is not None:  # event types: some positions are input only
        time_kw["target_masks"] = split.train_targets[rank::world]

    def validate(m: SeqRecModel) -> dict[str, float]:
        return evaluate_model(
            m, split.valid_hist, split.valid_target, data.num_items, tc, device, exclude_history, valid_timed
        )

    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        metrics_path.write_text("")
        (run_dir / "config.json").write_text(
            json.dumps(
                {
                    "model": model_name,
                    "model_config": model.cfg.to_dict(),
                    "train_config": tc.to_dict(),
                    "task_config": task_cfg.to_dict(),
                    "loss": resolve_loss(tc, task_cfg, data.num_items)[0].loss,  # what loss "auto" became
                    "dataset": data.stats(),
                    "data_fingerprint": data.fingerprint(),
                },
                indent=2,
            )
        )
    # One process checks for a stop after every step; DDP replicas every few steps, rank 0
    # deciding through a broadcast (safe mid-epoch: _in_step gives every rank the same steps).
    check_every = 1 if world == 1 else budget_mod.DDP_CHECK_STEPS

    def halt_now(last_planned: bool) -> str | None:
        return budget_mod.halt_reason(request.signal, budget, lr_factor, sched.last_epoch, last_planned)

    def agree(halt: str | None, last_step: int) -> str | None:
        """Rank 0's decision (why it stops, or None; where the budget ends the lr schedule) on every rank, applied."""
        if world > 1:
            flags = torch.tensor([HALTS.index(halt), last_step], device=device)
            dist.broadcast(flags, 0)
            halt, last_step = HALTS[int(flags[0].item())], int(flags[1].item())
        if last_step:
            lr_factor.end_at_step(last_step)
        return halt

    best, best_epoch, bad_evals = -1.0, 0, 0
    t0, last_plot = t_start, time.perf_counter()
    history: list[dict[str, Any]] = []
    stop_reason = "epochs"
    with StopRequest() as request:
        for epoch in range(1, tc.epochs + 1):
            model.train()
            t_ep = time.perf_counter()
            # Summed on the device: reading the loss every step would sync a GPU each step and
            # keep the host from queueing the next one (the progress bar reads it every 25th).
            total, count = torch.zeros((), device=device), 0
            n_batches = task.num_batches(train_seqs, tc.batch_size)
            bar = tqdm(
                _in_step(task.batches(train_seqs, tc.batch_size, rng, device, **time_kw), world, device),
                total=n_batches,
                desc=f"epoch {epoch}",
                disable=not progress or rank != 0,
                leave=False,
            )
            log = budget_mod.EpochLog(epoch, n_batches, enabled=not progress and rank == 0)
            halt = None
            for batch in bar:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = net(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                total += loss.detach().float()
                count += 1
                if not bar.disable and count % 25 == 1:
                    bar.set_postfix(loss=f"{float(total) / count:.4f}")
                log.tick(count, lambda: float(total) / count)  # noqa: B023  # called right here
                if count % check_every == 0 and (world > 1 or count < n_batches):
                    halt = agree(halt_now(last_planned=False), budget.last_step(sched.last_epoch))
                    if halt is not None:
                        break
            partial = halt is not None and count < n_batches  # cut short: evaluated below, kept if the best
            mean_loss = float(total) / max(count, 1)  # a device read: the epoch's queued work is done
            epoch_s = time.perf_counter() - t_ep
            row: dict[str, Any] = {
                "epoch": epoch,
                "loss": mean_loss,
                "epoch_seconds": round(epoch_s, 3),
                "lr": opt.param_groups[0]["lr"],
                "steps": count,
            }
            if partial:
                row["partial"] = True
            elif halt is None:
                halt = halt_now(last_planned=epoch == tc.epochs)
            # The epoch training stops after is always evaluated: with a decaying lr it is the best.
            stop = halt is not None
            if rank == 0 and (epoch % tc.eval_every == 0 or epoch == tc.epochs or stop):
                valid = validate(kept)
                row.update({f"valid_{k}": v for k, v in valid.items() if k != "users"})
                if ema is not None:
                    raw = validate(model)
                    row.update({"raw_valid_ndcg@10": raw["ndcg@10"], "raw_valid_hr@10": raw["hr@10"]})
                if valid["ndcg@10"] > best:
                    best, best_epoch, bad_evals = valid["ndcg@10"], epoch, 0
                    save_checkpoint(run_dir / "best.pt", model_name, kept, tc, task_cfg, data, popularity, epoch, valid)
                else:
                    bad_evals += 1
                    if bad_evals >= tc.patience:
                        stop, stop_reason = True, "early_stop"
            row["elapsed_seconds"] = round(time.perf_counter() - t0, 3)
            if rank == 0:
                history.append(row)
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                # A plot costs ~0.1 s: on a GPU epoch of ~0.5 s, redrawing it every epoch would be a
                # fifth of the run. The last epoch is always drawn (stop, or the epoch budget's end).
                if stop or epoch == tc.epochs or time.perf_counter() - last_plot >= PLOT_EVERY_S:
                    plot_learning_curve(history, run_dir / "learning_curve.png")
                    last_plot = time.perf_counter()
                if not progress:
                    shown = {
                        k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in row.items()
                        if k in ("epoch", "loss", "epoch_seconds", "valid_ndcg@10", "valid_hr@10", "raw_valid_ndcg@10")
                    }
                    print(json.dumps(shown), file=sys.stderr, flush=True)
            if halt is not None:
                stop_reason = halt
            if agree("stop" if stop else None, budget.last_step(sched.last_epoch, force=True)):
                break
    seconds = time.perf_counter() - t0
    if rank != 0:
        _ddp_finish(world)
        return TrainResult(run_dir, best_epoch, {}, {}, seconds)
    best_model, _ = load_checkpoint(run_dir / "best.pt", device)
    valid = validate(best_model)
    test = evaluate_model(
        best_model, split.test_hist, split.test_target, data.num_items, tc, device, exclude_history, test_timed
    )
    best_row = next((r for r in history if r["epoch"] == best_epoch), {})
    final = {
        "model": model_name,
        "dataset": data.name,
        "best_epoch": best_epoch,
        "train_seconds": round(seconds, 2),
        "seconds_to_best": best_row.get("elapsed_seconds"),
        "valid": valid,
        "test": test,
        "device": str(device),
        "epochs_run": len(history),
        "stop_reason": stop_reason,
        "protocol": "leave-one-out" if split_given is False else "custom split",
        "exclude_history": exclude_history,
        "warm_start": warm,
    }
    (run_dir / "final.json").write_text(json.dumps(final, indent=2))
    _ddp_finish(world)
    return TrainResult(run_dir, best_epoch, valid, test, seconds, stop_reason)


class TaskLoss(torch.nn.Module):
    """model + task as one module whose forward is the loss, so DDP can wrap it."""

    def __init__(self, model: SeqRecModel, task: Any) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task.loss(self.model, batch)


def plot_learning_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ep = [r["epoch"] for r in history]
    ax1.plot(ep, [r["loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ev = [r for r in history if "valid_ndcg@10" in r]
    if ev:
        ax2 = ax1.twinx()
        ax2.plot(
            [r["epoch"] for r in ev], [r["valid_ndcg@10"] for r in ev], "o-", color="tab:red", label="valid NDCG@10"
        )
        ax2.plot(
            [r["epoch"] for r in ev], [r["valid_hr@10"] for r in ev], "s--", color="tab:orange", label="valid HR@10"
        )
        ax2.set_ylabel("validation (full ranking)")
        ax2.legend(loc="lower right")
    ax1.set_title("learning curve")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)

