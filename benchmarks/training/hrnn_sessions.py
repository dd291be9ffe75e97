"""HRNN against GRU4Rec on the session-aware protocol: one table, same queries, same budget.

Rows (each a recipe, trained and tested on the split of training/hrnn.py):
  popularity              training counts (no model)
  gru4rec-session         recipes/gru4rec-ml-100k-user-sessions.toml, histories = the current session
  gru4rec-concat          recipes/gru4rec-ml-100k-user-sessions-concat.toml, histories = all earlier events
  hrnn                    recipes/hrnn-ml-100k.toml, histories = all earlier events, with times

Every row ranks the same test targets (the split's `history` changes what precedes them only).
Writes benchmarks/results/hrnn-sessions-<dataset>.json:

    python -m benchmarks.training.hrnn_sessions [--rows hrnn gru4rec-session ...] [--set train.max_minutes=5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.common import write_result
from training.config import Recipe, merge_tables, parse_overrides, split_model_table
from training.data import prepare
from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores
from training.hrnn import user_session_protocol
from training.train import train

ROOT = Path(__file__).resolve().parents[2]
ROWS = {
    "gru4rec-session": ("recipes/gru4rec-ml-100k-user-sessions.toml", "session"),
    "gru4rec-concat": ("recipes/gru4rec-ml-100k-user-sessions-concat.toml", "user"),
    "hrnn": ("recipes/hrnn-ml-100k.toml", "user"),
}
KEYS = ("hr@10", "ndcg@10", "hr@20", "mrr@20")


def _pick(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(metrics[k], 4) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--dataset", default="ml-100k", help="named dataset with timestamps")
    ap.add_argument("--gap", type=int, default=1800, help="session gap in seconds")
    ap.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", help="override, every row")
    ap.add_argument("--out", type=Path, default=Path("runs/hrnn-sessions"), help="run directories")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. what else ran)")
    args = ap.parse_args()

    data = prepare(args.dataset)
    result: dict = {"dataset": args.dataset, "session_gap_s": args.gap, "note": args.note, "results": {}}
    _, split = user_session_protocol(data, args.gap, "user")
    result["split"] = {
        "training_sequences": len(split.train),
        "validation_queries": len(split.valid_target),
        "test_queries": len(split.test_target),
    }
    pop = popularity_score_fn(popularity_scores(split.train, data.num_items))
    test = full_rank_eval(pop, split.test_hist, split.test_target, data.num_items, 200, exclude_history=False)
    result["results"]["popularity"] = {"test": _pick(test)}
    for row in args.rows:
        recipe_path, history = ROWS[row]
        rec = Recipe.load(ROOT / recipe_path)
        tables = merge_tables(rec.tables, parse_overrides(args.set))
        name, model_over = split_model_table(tables["model"])
        assert name is not None
        run_data, row_split = user_session_protocol(data, args.gap, history)
        assert (row_split.test_target == split.test_target).all()  # the same queries in every row
        res = train(
            name,
            run_data,
            args.out / f"{args.dataset}-{row}",
            model_over,
            tables["train"],
            progress=False,
            split=row_split,
            exclude_history=False,
            task_overrides=tables["task"],
        )
        epochs = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
        result["results"][row] = {
            "recipe": recipe_path,
            "command": f"seqrec train --recipe {recipe_path} --sessions user-gap --session-history {history}",
            "overrides": args.set,
            "history": history,
            "best_epoch": res.best_epoch,
            "epochs_run": len(epochs),
            "median_epoch_seconds": round(statistics.median(r["epoch_seconds"] for r in epochs), 2),
            "train_seconds": round(res.seconds, 1),
            "stop_reason": res.stop_reason,
            "valid": _pick(res.valid),
            "test": _pick(res.test),
        }
        print(json.dumps({row: result["results"][row]}), file=sys.stderr, flush=True)
    path = write_result(f"hrnn-sessions-{args.dataset}", result)
    print(path)


if __name__ == "__main__":
    main()
