"""Train a model to convergence and record quality and speed.

Writes benchmarks/results/train-<model>-<dataset>-<device>[-tag].json with per-epoch times,
wall time to the best epoch, and full-ranking validation/test metrics of the best epoch.

    python benchmarks/train_quality.py --model sasrec --dataset ml-1m [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, write_result
from training.data import (
    leave_one_out,
    prepare,
)
from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores
from training.train import train
from training.zoo import get_spec


def parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def time_to_target(rows: list[dict], target: float) -> dict | None:
    """The first evaluated epoch whose validation NDCG@10 reaches `target`: its number, the
    training seconds spent to get there (epoch times alone) and the wall seconds (evaluation
    and checkpointing included). None when no epoch reached it."""
    train_s = 0.0
    for r in rows:
        train_s += r["epoch_seconds"]
        ndcg = r.get("valid_ndcg@10")
        if ndcg is not None and ndcg >= target:
            return {
                "target": target,
                "epoch": r["epoch"],
                "valid_ndcg@10": ndcg,
                "train_seconds": round(train_s, 3),
                "wall_seconds": r.get("elapsed_seconds"),
            }
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--set", action="append", default=[], help="model option key=value")
    ap.add_argument("--train", action="append", default=[], help="train option key=value (extra.* for task knobs)")
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    ap.add_argument(
        "--target-ndcg",
        type=float,
        action="append",
        default=[],
        help="record the time to the first epoch whose validation NDCG@10 reaches this (repeatable)",
    )
    ap.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where the result JSON goes (default benchmarks/results)"
    )
    ap.add_argument("--out", type=Path, default=None, help="run directory (default runs/bench-...)")
    args = ap.parse_args()

    model_over = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    train_over: dict = {}
    extra: dict = {}
    for k, v in (s.split("=", 1) for s in args.train):
        if k.startswith("extra."):
            extra[k[6:]] = parse_value(v)
        else:
            train_over[k] = parse_value(v)
    if extra:
        train_over["extra"] = {**get_spec(args.model).train_defaults.extra, **extra}
    data = prepare(args.dataset)
    tag = f"-{args.tag}" if args.tag else ""
    run_dir = args.out or Path("runs") / f"bench-{args.model}-{args.dataset}{tag}"
    t0 = time.perf_counter()
    res = train(args.model, data, run_dir, model_over, train_over, progress=False)
    wall = time.perf_counter() - t0
    final = json.loads((run_dir / "final.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_times = [r["epoch_seconds"] for r in rows]
    s = leave_one_out(data)
    pop = full_rank_eval(
        popularity_score_fn(popularity_scores(s.train, data.num_items)), s.test_hist, s.test_target, data.num_items, 200
    )
    device = final["device"].split(":")[0]
    to_target = {str(t): time_to_target(rows, t) for t in args.target_ndcg}
    path = write_result(
        f"train-{args.model}-{args.dataset}-{device}{tag}",
        {
            "model": args.model,
            "dataset": data.stats(),
            "model_overrides": model_over,
            "train_overrides": train_over,
            "config": json.loads((run_dir / "config.json").read_text()),
            "best_epoch": res.best_epoch,
            "epochs_run": len(rows),
            "stop_reason": final["stop_reason"],
            "epoch_seconds_median": statistics.median(epoch_times),
            "seconds_to_best_epoch": final["seconds_to_best"],
            "total_wall_seconds": round(wall, 1),
            "to_target": to_target or None,
            "test": res.test,
            "valid": res.valid,
            "popularity_test": pop,
            "curve": [
                {
                    k: r.get(k)
                    for k in (
                        "epoch",
                        "loss",
                        "lr",
                        "epoch_seconds",
                        "elapsed_seconds",
                        "valid_ndcg@10",
                        "valid_hr@10",
                        "raw_valid_ndcg@10",  # the un-averaged weights, with --train ema
                    )
                }
                for r in rows
            ],
        },
        args.results_dir,
    )
    print(
        json.dumps(
            {
                "result": str(path),
                "test_ndcg@10": res.test["ndcg@10"],
                "test_hr@10": res.test["hr@10"],
                "best_epoch": res.best_epoch,
                "wall_s": round(wall, 1),
                **({"to_target": to_target} if to_target else {}),
            }
        )
    )


if __name__ == "__main__":
    main()
