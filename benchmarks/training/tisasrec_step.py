"""Training-step time and activation memory of TiSASRec against SASRec, on the same real batches.

Both models take the same batches alternately (so a busy machine slows both alike), with the
settings of their comparison recipes (recipes/{sasrec,tisasrec}-ml-1m-ratings.toml: 2 blocks,
max_len 200, batch 128, full-softmax CE without the user's own items). Activation memory is the
bytes the forward pass keeps for the backward pass (distinct storages, counted through
torch.autograd.graph.saved_tensors_hooks); `naive_interval_tensors_mb` is what the two
(B, L, L, D) interval embeddings of a direct implementation of the paper would add per block.

  PYTHONPATH=. python -m benchmarks.training.tisasrec_step --steps 12
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import step_benchmark_main, training_case
from training.config import Recipe, split_model_table
from training.optim import adamw

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("sasrec", "tisasrec")


def _case(model: str, dataset: str) -> dict[str, Any]:
    rec = Recipe.load(ROOT / "recipes" / f"{model}-{dataset}.toml")
    _, model_over = split_model_table(rec.tables["model"])
    tables = {k: rec.tables[k] for k in ("train", "task")}
    return {"model": model, "dataset": dataset, "model_overrides": model_over, **tables}


def saved_bytes(fn: Any) -> tuple[Any, int]:
    """fn()'s result and the bytes of the distinct storages autograd saved while computing it."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def run_case(dataset: str, steps: int) -> dict[str, Any]:
    built = {m: training_case(_case(m, dataset)) for m in MODELS}
    data, split, tc, _, task = built["tisasrec"]
    times = [data.times(u)[: len(s)] for u, s in enumerate(split.train)]  # train = each sequence's head
    models = {m: built[m][3] for m in MODELS}
    opts = {m: adamw(list(models[m].parameters()), lr=tc.lr, weight_decay=tc.weight_decay) for m in MODELS}
    batches = task.batches(split.train, tc.batch_size, np.random.default_rng(0), torch.device("cpu"), times=times)
    step_s: dict[str, list[float]] = {m: [] for m in MODELS}
    act: dict[str, list[int]] = {m: [] for m in MODELS}
    shapes = []
    for batch in itertools.islice(batches, steps):  # a small dataset may have fewer batches
        shapes.append(tuple(batch["item_seq"].shape))
        for m in MODELS:
            model = models[m].train()
            feed = batch if m == "tisasrec" else {k: v for k, v in batch.items() if k != "time_seq"}
            t0 = time.perf_counter()
            task_m = built[m][4]
            loss, nbytes = saved_bytes(lambda task_m=task_m, model=model, feed=feed: task_m.loss(model, feed))
            opts[m].zero_grad(set_to_none=True)
            loss.backward()
            opts[m].step()
            step_s[m].append(time.perf_counter() - t0)
            act[m].append(nbytes)
    cfg = models["tisasrec"].cfg
    B, L = max(shapes)
    out: dict[str, Any] = {"items": data.num_items, "batch_size": tc.batch_size, "max_len": cfg.max_len}
    for m in MODELS:  # the first step warms up allocators
        out[f"{m}_step_ms_median"] = round(statistics.median(step_s[m][1:]) * 1000, 1)
        out[f"{m}_saved_activations_mb_max"] = round(max(act[m]) / 2**20, 1)
    out["step_ratio"] = round(out["tisasrec_step_ms_median"] / out["sasrec_step_ms_median"], 2)
    out["naive_interval_tensors_mb"] = round(2 * B * L * L * cfg.dim * 4 / 2**20, 1)
    out["largest_batch"] = [B, L]
    return out


def main() -> None:
    step_benchmark_main(__doc__, ["ml-1m-ratings", "ml-100k"], run_case, steps=12, name="tisasrec_step")


if __name__ == "__main__":
    main()
