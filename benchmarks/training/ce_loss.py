"""Training-step time with the fused (chunked) full-softmax loss against the plain one.

The plain loss is the textbook form: the whole (T, N) logit matrix, a dense exclusion mask
when the user's own items are excluded, then F.cross_entropy. The fused one
(training.losses.full_softmax_ce) builds the logits chunk by chunk and recomputes them in
the backward pass. Both run the same real batches through the same model, alternately, so
a busy machine slows both alike; the loss values must agree.

  PYTHONPATH=. python -m benchmarks.training.ce_loss --threads 1 --steps 6

Cases: SASRec on ML-1M (3,416 items, max_len 200, batch 128) with and without the user's own
items excluded, BERT4Rec on ML-1M (exclusion, batch 32) and BERT4Rec on Beauty (54,542 items,
max_len 50, batch 128, ρ = 0.6), where full softmax is the paper's loss.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import step_benchmark_main, training_case
from training import losses

FUSED = losses.full_softmax_ce


def plain_ce(
    h: torch.Tensor,
    pos: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole (T, N) logit matrix at once, a dense (T, N) mask for the exclusions."""
    logits = h @ table[1:].T  # (T, N)
    if bias is not None:
        logits = logits + bias[1:]
    if exclude is not None:
        excl = exclude if rows is None else exclude[rows]  # (T, N+1)
        logits = logits.masked_fill(excl[:, 1:].scatter(1, (pos - 1)[:, None], False), float("-inf"))
    return F.cross_entropy(logits.float(), pos - 1)


CASES: dict[str, dict[str, Any]] = {
    "sasrec-ml-1m": {
        "model": "sasrec",
        "dataset": "ml-1m",
        "model_overrides": {"positions": "absolute", "init_std": 0.02, "dropout": 0.1},
        "train": {"batch_size": 128},
    },
    "sasrec-ml-1m-exclude-seen": {
        "model": "sasrec",
        "dataset": "ml-1m",
        "model_overrides": {"positions": "absolute", "init_std": 0.02, "dropout": 0.1},
        "train": {"batch_size": 128, "extra": {"exclude_seen": True}},
    },
    "bert4rec-ml-1m-exclude-seen": {
        "model": "bert4rec",
        "dataset": "ml-1m",
        "model_overrides": {},
        "train": {"batch_size": 32, "bucket": True, "extra": {"exclude_seen": True}},
    },
    "bert4rec-beauty": {
        "model": "bert4rec",
        "dataset": "beauty",
        "model_overrides": {"max_len": 50, "dropout": 0.3},
        "train": {"batch_size": 128, "bucket": True, "extra": {"mask_prob": 0.6, "last_item_ratio": 1.0}},
    },
}


def run_case(name: str, steps: int) -> dict[str, Any]:
    data, split, tc, model, task = training_case(CASES[name])
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr)
    batches = task.batches(split.train, tc.batch_size, np.random.default_rng(0), torch.device("cpu"))
    sample = [next(batches) for _ in range(steps)]
    out: dict[str, Any] = {"items": data.num_items, "batch_size": tc.batch_size}
    timings: dict[str, dict[str, list[float]]] = {"plain": {"wall": [], "cpu": []}, "fused": {"wall": [], "cpu": []}}
    agree: list[float] = []
    for batch in sample:
        step_loss = {}
        for kind, fn in (("plain", plain_ce), ("fused", FUSED)):  # same batch, same weights
            losses.full_softmax_ce = fn
            model.train()
            torch.manual_seed(1)  # same dropout masks for both
            t0, c0 = time.perf_counter(), time.thread_time()
            loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            timings[kind]["wall"].append(time.perf_counter() - t0)
            timings[kind]["cpu"].append(time.thread_time() - c0)
            step_loss[kind] = float(loss)
        opt.step()
        agree.append(abs(step_loss["plain"] - step_loss["fused"]))
    losses.full_softmax_ce = FUSED
    for kind, t in timings.items():  # the first step of each warms up allocators
        out[f"{kind}_step_ms_median"] = round(statistics.median(t["wall"][1:]) * 1000, 1)
        out[f"{kind}_step_cpu_ms_median"] = round(statistics.median(t["cpu"][1:]) * 1000, 1)
    out["speedup_wall"] = round(out["plain_step_ms_median"] / out["fused_step_ms_median"], 2)
    out["speedup_cpu"] = round(out["plain_step_cpu_ms_median"] / out["fused_step_cpu_ms_median"], 2)
    out["max_abs_loss_difference"] = max(agree)
    return out


def main() -> None:
    step_benchmark_main(__doc__, list(CASES), run_case, steps=6, name="ce_loss")


if __name__ == "__main__":
    main()
