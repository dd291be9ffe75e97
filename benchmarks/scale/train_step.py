"""SASRec training steps at 20k to 5M items: the automatic loss beside the full softmax.

    python -m benchmarks.scale.train_step --items 20000 200000 1000000 5000000 --steps 6

For each catalogue size, a child process builds SASRec with the recipe defaults (dim 64, two
blocks, max_len 50 unless --max-len, batch 128) and takes --steps optimiser steps (forward,
backward, gradient clipping, fused AdamW: what the training loop does) on synthetic batches:
full-length sequences drawn from a Zipf-skewed popularity, so every position has a target and
popularity negatives are drawn from a skewed distribution as in a shop log. The loss is what
`train.loss = "auto"` chooses for that size, the full softmax (`ce`) beside it up to --ce-up-to
items, and the sampled softmax auto would use (4,096 popularity negatives, logQ) where auto
chooses the full one. Each child reports the median seconds per step (the first step warms up),
seconds per 1,000 sequences and its peak resident memory; a child per size, so one size's
memory never counts against the next. Writes benchmarks/results/scale/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import RESULTS, write_result
from training.config import TrainConfig

ZIPF_A = 1.0  # popularity of the r-th most popular item ~ 1 / r^a


def synthetic_batches(num_items: int, batch: int, max_len: int, seed: int = 0):
    """(popularity (N+1,), an endless iterator of {"item_seq", "target"} batches of full rows)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    weight = 1.0 / np.arange(1, num_items + 1) ** ZIPF_A
    weight = weight[rng.permutation(num_items)] / weight.sum()  # which item is popular: random
    counts = np.concatenate([[0.0], weight * 1e7]).astype(np.float32)  # a 10M-event log's counts

    def batches():
        while True:
            rows = torch.as_tensor(rng.choice(num_items, size=(batch, max_len + 1), p=weight) + 1)
            yield {"item_seq": rows[:, :-1].contiguous(), "target": rows[:, 1:].contiguous()}

    return counts, batches()


def run_child(num_items: int, loss: str, steps: int, max_len: int, batch: int, threads: int) -> dict[str, Any]:
    """Time `steps` training steps of SASRec on `num_items` items with `loss` (in this process)."""
    import torch

    from training.config import AUTO_NEGATIVES, resolve_loss
    from training.optim import adamw
    from training.train import keep_freed_memory
    from training.zoo import build_model, get_spec, resolve

    torch.set_num_threads(threads)
    keep_freed_memory()  # as training.train.train does
    train = {"loss": loss, "batch_size": batch}
    if loss == "sampled":  # what auto picks past ce_max_items, at any size
        train["num_negatives"] = AUTO_NEGATIVES
    task = {"pop_negatives": True} if loss == "sampled" else {}
    model_over, tc, task_cfg = resolve("sasrec", {"max_len": max_len}, train, task)
    chosen, chosen_task = resolve_loss(tc, task_cfg, num_items)
    torch.manual_seed(0)
    model = build_model("sasrec", num_items, model_over)
    popularity, batches = synthetic_batches(num_items, batch, max_len)
    task = get_spec("sasrec").make_task(model.cfg, tc, task_cfg, popularity)
    params = list(model.parameters())
    opt = adamw(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
    model.train()
    times = []
    for _ in range(steps):
        b = next(batches)
        t0 = time.perf_counter()
        out = task.loss(model, b)
        opt.zero_grad(set_to_none=True)
        out.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[1:] if len(times) > 1 else times)
    return {
        "items": num_items,
        "loss": loss,
        "resolved_loss": chosen.loss,
        "num_negatives": chosen.num_negatives if chosen.loss == "sampled" else None,
        "pop_negatives": getattr(chosen_task, "pop_negatives", None) if chosen.loss == "sampled" else None,
        "max_len": max_len,
        "batch_size": batch,
        "steps": steps,
        "step_s_median": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "s_per_1000_sequences": round(step_s / batch * 1000, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parameters": sum(p.numel() for p in params),
        "last_loss": round(float(out.detach()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[20_000, 200_000, 1_000_000, 5_000_000])
    ap.add_argument("--steps", type=int, default=6, help="steps per size and loss (the first is a warm-up)")
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--ce-up-to", type=int, default=200_000, help="also time the full softmax up to this many items")
    ap.add_argument("--ce-steps", type=int, default=3, help="steps of the full softmax (slow at large sizes)")
    ap.add_argument("--note", default="", help="free text stored with the result")
    ap.add_argument("--name", default="train_step", help="result file name under benchmarks/results/scale/")
    ap.add_argument("--child", nargs=2, metavar=("ITEMS", "LOSS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        items, loss = int(args.child[0]), args.child[1]
        steps = args.ce_steps if loss == "ce" else args.steps
        print(json.dumps(run_child(items, loss, steps, args.max_len, args.batch, args.threads)))
        return
    runs = []
    for items in args.items:
        # auto; ce where it fits; sampled where auto is ce, to show what the sampled step costs there
        losses = ["auto", "ce"] if items <= args.ce_up_to else ["auto"]
        if items <= TrainConfig().ce_max_items:
            losses.append("sampled")
        for loss in losses:
            cmd = [sys.executable, "-m", "benchmarks.scale.train_step", "--child", str(items), loss]
            cmd += ["--steps", str(args.steps), "--ce-steps", str(args.ce_steps), "--max-len", str(args.max_len)]
            cmd += ["--batch", str(args.batch), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    auto = {r["items"]: r["step_s_median"] for r in runs if r["loss"] == "auto"}
    ratios = {str(n): round(s / auto[min(auto)], 2) for n, s in auto.items()}
    payload = {"threads": args.threads, "note": args.note, "auto_step_vs_smallest": ratios, "runs": runs}
    path = write_result(args.name, payload, directory=RESULTS / "scale")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
