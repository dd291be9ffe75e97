"""Training-step time with torch's CPU dropout against seqrec's (models.layers.dropout), on the
same real batches.

torch:  nn.Dropout / F.dropout and scaled_dot_product_attention(dropout_p=p), whose CPU path is
        the unfused softmax attention with a bernoulli mask (one random number per element).
seqrec: the same attention written out, and a mask from four 16-bit uniforms per 64-bit draw
        (models.layers.dropout_keep) for the attention weights and every other dropout.

Two copies of one model, each with its own optimiser, take the same batches alternately, so a
busy machine slows both alike. Their dropout masks differ (different random streams), so their
losses are reported, not compared.

  PYTHONPATH=. python -m benchmarks.training.dropout_step --threads 1 --steps 12

Cases: SASRec on ML-1M (max_len 200, batch 128, full-softmax CE, dropout 0.1: its quality
recipe, where attention weights are (128, 1, 200, 200)), BERT4Rec on Beauty (its quality recipe).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import step_benchmark_main, training_case
from benchmarks.training.sampled_step import CASES as SAMPLED_CASES
from models import layers
from training.optim import adamw

CASES: dict[str, dict[str, Any]] = {
    "sasrec-ml-1m-recipe": {
        "model": "sasrec",
        "dataset": "ml-1m",
        "model_overrides": {"positions": "absolute", "init_std": 0.02, "dropout": 0.1},
        "train": {"extra": {"exclude_seen": True}},
    },
    "bert4rec-beauty-recipe": SAMPLED_CASES["bert4rec-beauty-uniform8192"],
}


def run_case(name: str, steps: int) -> dict[str, Any]:
    data, split, tc, model, task = training_case(CASES[name])
    models = {"torch": model, "seqrec": copy.deepcopy(model)}
    opts = {kind: adamw(list(m.parameters()), lr=tc.lr, weight_decay=tc.weight_decay) for kind, m in models.items()}
    batches = task.batches(split.train, tc.batch_size, np.random.default_rng(0), torch.device("cpu"))
    times: dict[str, list[float]] = {kind: [] for kind in models}
    last_loss: dict[str, float] = {}
    for _ in range(steps):
        batch = next(batches)
        for kind, m in models.items():
            with layers.fast_cpu_dropout(kind == "seqrec"):
                m.train()
                t0 = time.perf_counter()
                loss = task.loss(m, batch)
                opts[kind].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), tc.grad_clip)
                opts[kind].step()
                times[kind].append(time.perf_counter() - t0)
            last_loss[kind] = round(float(loss.detach()), 4)
    out: dict[str, Any] = {"items": data.num_items, "batch_size": tc.batch_size, "max_len": model.max_len}
    for kind, t in times.items():  # the first step of each warms up allocators
        out[f"{kind}_step_ms_median"] = round(statistics.median(t[1:]) * 1000, 1)
        out[f"{kind}_last_loss"] = last_loss[kind]
    out["speedup_step"] = round(out["torch_step_ms_median"] / out["seqrec_step_ms_median"], 2)
    return out


def main() -> None:
    step_benchmark_main(__doc__, list(CASES), run_case, steps=12, name="dropout_step")


if __name__ == "__main__":
    main()
