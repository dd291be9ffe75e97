"""Train a model to convergence and record quality and speed.

Writes benchmarks/results/training/train-<model>-<dataset>-<device>[-tag].json with per-epoch times,
wall time to the best epoch, and full-ranking validation/test metrics of the best epoch.

Takes the recipe files and the --set grammar of `seqrec train` (training/config.py):

    python -m benchmarks.training.train_quality --recipe recipes/sasrec-ml-1m.toml [--set train.max_minutes=30 ...]
    python -m benchmarks.training.train_quality --model sasrec --dataset ml-1m --set task.exclude_seen=true
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_result
from training.config import ConfigError, Recipe, merge_tables, parse_overrides, split_model_table
from training.data import leave_one_out, prepare, prepare_file
from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores
from training.train import train
from training.zoo import resolve


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
    ap.add_argument("--recipe", type=Path, default=None, help="a recipe file (recipes/*.toml)")
    ap.add_argument("--model", default=None, help="model (default: the recipe's, else sasrec)")
    ap.add_argument("--dataset", default=None, help="named dataset (default: the recipe's, else ml-1m)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override one option (model., train. or task.), as `seqrec train --set`",
    )
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    ap.add_argument(
        "--target-ndcg",
        type=float,
        action="append",
        default=[],
        help="record the time to the first epoch whose validation NDCG@10 reaches this (repeatable)",
    )
    ap.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS / "training",
        help="where the result JSON goes (default benchmarks/results/training)",
    )
    ap.add_argument("--out", type=Path, default=None, help="run directory (default runs/bench-...)")
    args = ap.parse_args()

    try:
        rec = Recipe.load(args.recipe) if args.recipe else None
        cli = {"model": {"name": args.model} if args.model else {}, "train": {}, "task": {}}
        tables = merge_tables(rec.tables if rec else {}, cli, parse_overrides(args.set))
        model_name, model_table = split_model_table(tables["model"])
        model_name = model_name or "sasrec"
        model_over, tc, task_cfg = resolve(model_name, model_table, tables["train"], tables["task"])
    except ConfigError as exc:
        ap.error(str(exc))
    if args.dataset is None and rec is not None and rec.file:
        data = prepare_file(Path(rec.file))
    else:
        data = prepare(args.dataset or (rec.dataset if rec else None) or "ml-1m")
    args.model, args.dataset = model_name, data.name
    train_over = dict(tables["train"])
    tag = f"-{args.tag}" if args.tag else ""
    run_dir = args.out or Path("runs") / f"bench-{args.model}-{args.dataset}{tag}"
    t0 = time.perf_counter()
    res = train(args.model, data, run_dir, model_over, tc.to_dict(), progress=False, task_overrides=task_cfg.to_dict())
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
            "recipe": str(args.recipe) if args.recipe else None,
            "model_overrides": model_over,
            "train_overrides": train_over,
            "task_overrides": tables["task"],
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
                        "raw_valid_ndcg@10",  # the un-averaged weights, with train.ema
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
