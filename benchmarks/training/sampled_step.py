"""Training-step time of the sampled-softmax recipes on a large catalogue, before and after
two changes (docs/results/training-speed.md), on the same real batches.

before: the textbook sampled softmax (a (T, K) comparison to mask negatives equal to the
        positive, the (T, 1 + K) concatenation of positive and negative logits, F.cross_entropy;
        BERT4Rec's b^O as a column of the whole item table [E | b^O], rebuilt every step) and
        torch's default multi-tensor AdamW (~10 passes over every parameter tensor);
after:  training.losses.sampled_softmax (log-sum-exp of the positive and the negatives without
        the concatenation, collisions by binary search, -log q and b^O added inside the GEMM for
        the sampled rows only) and fused AdamW (training.optim.adamw).

Two copies of one model, each with its own optimiser, take the same batches alternately with
the same negatives and dropout masks, so a busy machine slows both alike and their losses must
agree. Each step is timed in parts: loss forward + backward, gradient clipping, optimiser step.

  PYTHONPATH=. python -m benchmarks.training.sampled_step --threads 1 --steps 12

Cases (Beauty: 54,542 items, max_len 50, batch 128): BERT4Rec with 8,192 uniform negatives,
rho = 0.6 and a last-item sample per sequence (its quality recipe), SASRec with 4,096
popularity negatives and logQ (its quality recipe).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import step_benchmark_main, training_case
from training import losses
from training.optim import adamw

SAMPLED = losses.sampled_softmax


def dense_sampled_softmax(
    h: torch.Tensor,
    pos: torch.Tensor,
    table: torch.Tensor,
    num_negatives: int,
    popularity: torch.Tensor | None = None,
    logq: str = "negatives",
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same loss in its textbook form, drawing the same negatives (logq="negatives" only);
    a bias goes in as BERT4Rec's did before: [h, 1] against the whole table [E | b^O]."""
    if bias is not None:
        h = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)
        table = torch.cat([table, bias[:, None]], dim=1)
    num_items = table.shape[0] - 1
    pos_logit = (h * table[pos]).sum(-1, keepdim=True)  # (T, 1)
    if popularity is None:
        neg = torch.randint(1, num_items + 1, (num_negatives,), device=h.device)
        neg_logit = h @ table[neg].T  # (T, K)
    else:
        neg = torch.multinomial(popularity, num_negatives, replacement=True)
        neg_logit = h @ table[neg].T - (popularity[neg].log() - popularity.sum().log())
    neg_logit = neg_logit.masked_fill(neg[None, :] == pos[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1).float()  # (T, 1 + K)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=h.device))


CASES: dict[str, dict[str, Any]] = {
    "bert4rec-beauty-uniform8192": {
        "model": "bert4rec",
        "dataset": "beauty",
        "model_overrides": {"max_len": 50, "dropout": 0.3},
        "train": {
            "loss": "sampled",
            "num_negatives": 8192,
            "batch_size": 128,
            "bucket": True,
            "extra": {"mask_prob": 0.6, "last_item_ratio": 1.0},
        },
    },
    "sasrec-beauty-popneg4096": {
        "model": "sasrec",
        "dataset": "beauty",
        "model_overrides": {"max_len": 50, "dropout": 0.5},
        "train": {"loss": "sampled", "num_negatives": 4096, "batch_size": 128, "extra": {"pop_negatives": True}},
    },
}
PARTS = ("loss", "clip", "opt")


def run_case(name: str, steps: int) -> dict[str, Any]:
    data, split, tc, model, task = training_case(CASES[name])
    variants = {
        "before": (model, dense_sampled_softmax, torch.optim.AdamW),
        "after": (copy.deepcopy(model), SAMPLED, adamw),
    }
    opts = {
        kind: make(list(m.parameters()), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
        for kind, (m, _, make) in variants.items()
    }
    batches = task.batches(split.train, tc.batch_size, np.random.default_rng(0), torch.device("cpu"))
    times: dict[str, dict[str, list[float]]] = {kind: {p: [] for p in PARTS} for kind in variants}
    agree: list[float] = []
    for _ in range(steps):
        batch = next(batches)
        step_loss = {}
        for kind, (m, fn, _) in variants.items():  # same batch, same weights, same draws
            losses.sampled_softmax = fn
            m.train()
            torch.manual_seed(1)
            t0 = time.perf_counter()
            loss = task.loss(m, batch)
            opts[kind].zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(m.parameters(), tc.grad_clip)
            t2 = time.perf_counter()
            opts[kind].step()
            t3 = time.perf_counter()
            for part, dt in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[kind][part].append(dt)
            step_loss[kind] = float(loss.detach())
        agree.append(abs(step_loss["before"] - step_loss["after"]))
    losses.sampled_softmax = SAMPLED
    out: dict[str, Any] = {"items": data.num_items, "batch_size": tc.batch_size, "negatives": tc.num_negatives}
    for kind, parts in times.items():  # the first step of each warms up allocators
        for part, t in parts.items():
            out[f"{kind}_{part}_ms_median"] = round(statistics.median(t[1:]) * 1000, 1)
        step = [sum(x) for x in zip(*parts.values(), strict=True)]
        out[f"{kind}_step_ms_median"] = round(statistics.median(step[1:]) * 1000, 1)
    out["speedup_step"] = round(out["before_step_ms_median"] / out["after_step_ms_median"], 2)
    out["max_abs_loss_difference"] = max(agree)
    return out


def main() -> None:
    step_benchmark_main(__doc__, list(CASES), run_case, steps=12, name="sampled_step")


if __name__ == "__main__":
    main()
