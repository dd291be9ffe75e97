"""Event types on MovieLens-1M ratings: SASRec trained with and without types, judged on the same
next-like queries (training/event_types.py).

The ratings are read as typed events (dataset ml-1m-ratings-typed: 4-5 stars like, 3 view,
1-2 dislike). Variants, each with the recipe's model and budget:

  untyped       every rating is an input and a target, as when the log has no types
  typed         dislikes out of input and targets; targets: likes (views are input only)
  typed-views   dislikes out of input and targets; targets: likes and views
  likes-only    dislikes stay input (as views), targets: likes (which part of `typed` costs what)
  typed-input   as typed, and the model reads each event's type (task.type_input: a type embedding)
  typed-input-views        as typed-input, and the next view learned beside the next like (both
                           weigh 1, task.type_weights); still judged on the next like
  typed-input-views-w0.3   as typed-input-views, a view target's loss weighed 0.3

Every variant is evaluated on each user's last like (validation: the like before it), full
ranking, with the history and the disliked items left out of the ranked list, and counts how
often a disliked item reaches the top 10 when only the history is left out.

    flock /tmp/seqrec-cpu0.lock taskset -c 0 \
        python -m benchmarks.training.event_types --recipe recipes/sasrec-ml-1m-typed.toml --variants typed untyped
    flock /tmp/seqrec-cpu1.lock taskset -c 1 python -m benchmarks.training.event_types \
        --recipe recipes/sasrec-ml-1m-typed.toml --variants typed-input typed-input-views-w0.3 \
        --name event_types-ml-1m-type-input --merge

Results go to benchmarks/results/training/NAME.json; --merge keeps the variants already there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import write_result
from training.config import Recipe, split_model_table
from training.data import prepare
from training.event_types import train_with_types

VARIANTS = {
    "untyped": {"use_types": False},
    "typed": {"use_types": True, "target_types": ["like"]},
    "typed-views": {"use_types": True, "target_types": ["like", "view"]},
    "likes-only": {"use_types": True, "negative_types": [], "target_types": ["like"]},
    "typed-input": {"use_types": True, "target_types": ["like"], "task": {"type_input": True}},
    # Views learned as targets beside likes (task.type_weights), judged on the same next-like queries.
    "typed-input-views": {
        "use_types": True,
        "target_types": ["like"],
        "task": {"type_input": True, "type_weights": {"like": 1.0, "view": 1.0}},
    },
    "typed-input-views-w0.3": {
        "use_types": True,
        "target_types": ["like"],
        "task": {"type_input": True, "type_weights": {"like": 1.0, "view": 0.3}},
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("recipes/sasrec-ml-1m-typed.toml"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--name", default="event_types-ml-1m", help="result file under benchmarks/results/")
    ap.add_argument("--runs", type=Path, default=Path("runs/event_types"), help="run directories")
    ap.add_argument("--merge", action="store_true", help="keep the variants already in the result file")
    ap.add_argument("--seed", type=int, default=None, help="train.seed (default: the recipe's); kept as VARIANT@seedN")
    args = ap.parse_args()

    rec = Recipe.load(args.recipe)
    model_name, model_over = split_model_table(rec.tables["model"])
    assert model_name and rec.dataset
    data = prepare(rec.dataset)
    out_path = Path(__file__).resolve().parents[1] / "results" / "training" / f"{args.name}.json"
    variants: dict[str, object] = {}
    config = None  # the configuration the file's recipe reproduces: the first variant's, kept when merging
    if args.merge and out_path.is_file():
        old = json.loads(out_path.read_text())
        variants, config = old.get("variants", {}), old.get("config")
    train_table = dict(rec.tables["train"])
    suffix = ""
    if args.seed is not None and args.seed != train_table.get("seed"):
        train_table["seed"], suffix = args.seed, f"@seed{args.seed}"
    for name in args.variants:
        run_dir = args.runs / f"{name}{suffix}"
        variant = dict(VARIANTS[name])
        task_table = {**rec.tables["task"], **variant.pop("task", {})}  # type: ignore[dict-item]
        res = train_with_types(
            model_name,
            data,
            run_dir,
            model_over,
            train_table,
            task_table,
            progress=False,
            **variant,  # type: ignore[arg-type]
        )
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        res["seed"] = train_table.get("seed")
        res["command"] = " ".join(["python", *sys.argv])  # the file's top-level command is the last run's
        res["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        res["epochs_run"] = len(rows)
        res["epoch_seconds_median"] = statistics.median(r["epoch_seconds"] for r in rows)
        res["curve"] = [{k: r.get(k) for k in ("epoch", "loss", "elapsed_seconds", "valid_ndcg@10")} for r in rows]
        run_config = json.loads((run_dir / "config.json").read_text())
        res["task_config"] = run_config["task_config"]  # what the variant changed of the recipe's
        variants[f"{name}{suffix}"] = res
        if config is None and not suffix:
            config = run_config
        print(name + suffix, json.dumps({k: res["test"][k] for k in ("ndcg@10", "hr@10")}), flush=True)
        payload = {
            "recipe": str(args.recipe),
            "dataset": data.stats(),
            "rule": "ratings 4-5: like, 3: view, 1-2: dislike",
            "seeds": sorted({v["seed"] for v in variants.values()}),  # type: ignore[index]
            "variants": variants,
        }
        summary = seed_summary(variants)  # type: ignore[arg-type]
        payload["headline"] = "test NDCG@10 " + ", ".join(
            f"{k} {v['mean']['ndcg@10']:.4f}" + (f" ({len(v['seeds'])} seeds)" if len(v["seeds"]) > 1 else "")
            for k, v in summary.items()
        )
        payload["summary"] = summary
        if config is not None:
            payload["config"] = config  # the first variant's configuration: what the recipe reproduces
        write_result(args.name, payload, out_path.parent)


def seed_summary(variants: dict[str, dict]) -> dict[str, dict]:
    """Per variant (VARIANT and VARIANT@seedN together): its seeds, the test metrics' mean, and
    their sample standard deviation and range where there are several seeds."""
    groups: dict[str, list[dict]] = {}
    for key, res in variants.items():
        groups.setdefault(key.split("@", 1)[0], []).append(res)
    out: dict[str, dict] = {}
    for name, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        row: dict = {"seeds": [r["seed"] for r in runs], "mean": {}, "sd": {}, "range": {}}
        for m in ("ndcg@10", "hr@10"):
            vals = [r["test"][m] for r in runs]
            row["mean"][m] = statistics.fmean(vals)
            if len(vals) > 1:
                row["sd"][m] = statistics.stdev(vals)
                row["range"][m] = [min(vals), max(vals)]
        out[name] = row
    return out


if __name__ == "__main__":
    main()
