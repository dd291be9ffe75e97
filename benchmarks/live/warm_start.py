"""Does a warm start pay? Time to the from-scratch model's best validation NDCG@10, over seeds.

    flock /tmp/seqrec-cpu0.lock taskset -c 0 python -m benchmarks.live.warm_start --dataset ml-100k \
        --recipe recipes/sasrec-warm-ml-100k.toml

The split of the live-loop replay (benchmarks/live/online_replay.py): events sorted by time and cut
at the 80% and 90% quantiles T1 < T2. The served model v1 (SASRec, the replay's settings, seed
42; with --v1-per-seed one v1 per seed, so that each seed repeats the whole loop) is trained on
everything before T1 and exported as a bundle; the retrain's data is
everything before T2 (the offline log plus the live events up to T2, as `prepare --file
offline.csv --file events.parquet` combines them). For each seed, on that data:

- from scratch: the replay's settings (lr 1e-3 constant, patience 10, the time budget);
- warm start: `seqrec train --init <v1 bundle> --recipe <the fine-tuning recipe>`.

Both runs of a seed use the same seed (data order, dropout). The target is the mean over seeds
of the from-scratch runs' best validation NDCG@10; its time is the mean of their times to that
best. The warm start's time is where the mean of its runs' curves (epoch by epoch) first reaches
the target, at the mean elapsed time of that epoch. Each seed is reported too (the warm run
against its own seed's from-scratch best).

From-scratch runs and v1 do not depend on the recipe: they are kept in --workdir and reused, so
trying another recipe reruns only the warm starts.
Results: benchmarks/results/warm_start-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.live.online_replay import SASREC, cli, read_events  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402

Curve = list[tuple[float, float]]  # (elapsed seconds, valid NDCG@10) per evaluated epoch


def curve(run_dir: Path) -> Curve:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["elapsed_seconds"], r["valid_ndcg@10"]) for r in rows if "valid_ndcg@10" in r]


def time_to(points: Curve, target: float) -> float | None:
    return next((t for t, v in points if v >= target), None)


def epochs_to(points: Curve, target: float) -> int | None:
    """Evaluations (every epoch here) until `target` is reached."""
    return next((i + 1 for i, (_, v) in enumerate(points) if v >= target), None)


def mean_curve(curves: list[Curve]) -> Curve:
    """Epoch by epoch; a run that stopped earlier holds its last value (give best-so-far curves:
    early stopping keeps the best checkpoint, so a stopped run's quality does not fall back)."""
    n = max(len(c) for c in curves)
    out = []
    for i in range(n):
        vals = [c[min(i, len(c) - 1)][1] for c in curves]
        times = [c[i][0] for c in curves if i < len(c)]
        out.append((statistics.fmean(times), statistics.fmean(vals)))
    return out


def best_so_far(points: Curve) -> Curve:
    out, b = [], float("-inf")
    for t, v in points:
        b = max(b, v)
        out.append((t, b))
    return out


def final(run_dir: Path) -> dict[str, Any]:
    f = json.loads((run_dir / "final.json").read_text())
    return {
        "best_valid_ndcg@10": round(f["valid"]["ndcg@10"], 4),
        "test_ndcg@10": round(f["test"]["ndcg@10"], 4),
        "test_hr@10": round(f["test"]["hr@10"], 4),
        "seconds_to_best": f["seconds_to_best"],
        "train_seconds": f["train_seconds"],
        "best_epoch": f["best_epoch"],
        "epochs_run": f["epochs_run"],
        "stop_reason": f["stop_reason"],
    }


def spread(xs: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(xs), 4),
        "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0,
        "min": round(min(xs), 4),
        "max": round(max(xs), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m-partial"])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--recipe", type=Path, required=True, help="The warm start's fine-tuning recipe.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    ap.add_argument("--cuts", type=float, nargs=2, default=[0.8, 0.9], help="Quantiles of event time for T1, T2.")
    ap.add_argument("--max-minutes", type=float, default=4.0, help="Budget of v1 and of each from-scratch run.")
    ap.add_argument("--patience", type=int, default=10, help="Patience of v1 and of each from-scratch run.")
    ap.add_argument("--workdir", type=Path, default=None, help="Default: /tmp/seqrec-warm-<dataset>.")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tag", default="", help="Suffix of the result file (another recipe's trial).")
    ap.add_argument(
        "--warm-set", nargs="*", default=[], metavar="KEY=VALUE", help="Extra --set options of the warm starts only."
    )
    ap.add_argument(
        "--v1-per-seed",
        action="store_true",
        help="Train v1 with each seed (the warm start of seed s starts from v1 of seed s); default: one v1, seed 42.",
    )
    ap.add_argument(
        "--keep",
        type=float,
        default=1.0,
        help="Start from keep * v1 + (1 - keep) * a fresh init (training/warm_start.py shrink_toward_init).",
    )
    args = ap.parse_args()
    work = args.workdir or Path(f"/tmp/seqrec-warm-{args.dataset}")
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    suffix = f"-{args.tag}" if args.tag else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"warm_start-{args.dataset}{suffix}.json"

    df = read_events(args.dataset, args.data_dir)
    t1 = int(df["timestamp"].quantile(args.cuts[0]))
    t2 = int(df["timestamp"].quantile(args.cuts[1]))
    offline, retrain = df.filter(pl.col("timestamp") < t1), df.filter(pl.col("timestamp") < t2)
    for name, part in (("offline", offline), ("retrain", retrain)):
        if not (cache / f"{name}.done").exists():
            part.write_csv(work / f"{name}.csv")
            cli("prepare", "--file", str(work / f"{name}.csv"), "--name", name, "--cache-dir", str(cache))
            (cache / f"{name}.done").write_text("")
    print(f"events {df.height}: offline (< T1) {offline.height}, retrain (< T2) {retrain.height}", flush=True)

    base = ["--model", "sasrec", "--cache-dir", str(cache), "--no-progress", *SASREC, "--set", "train.num_threads=1"]
    # The warm start's architecture is v1's; its dropout is the recipe's (a --dropout flag would win over it).
    warm_base = [a for a, prev in zip(base, ["", *base[:-1]], strict=True) if "--dropout" not in (a, prev)]
    scratch_flags = ["--epochs", "200", "--patience", str(args.patience), "--max-minutes", str(args.max_minutes)]

    def served_model(seed: int) -> tuple[Path, Path]:
        """v1 trained with `seed` on the events before T1, and its bundle (or its shrunk checkpoint)."""
        tail = "" if seed == 42 else f"-{seed}"
        run, bundle = work / "runs" / f"v1{tail}", work / "bundles" / f"sasrec-v1{tail}"
        if not (run / "final.json").exists():
            cli(
                "train", "--dataset", "offline", "--out", str(run), *base, *scratch_flags, "--set", f"train.seed={seed}"
            )
        if not bundle.exists():
            cli("export", str(run / "best.pt"), "--out", str(bundle.parent), "--name", bundle.name)
        if args.keep == 1.0:
            return run, bundle
        from training.warm_start import load_source, save_source, shrink_toward_init

        shrunk = shrink_toward_init(load_source(bundle), args.keep)
        return run, save_source(shrunk, work / "bundles" / f"sasrec-v1{tail}-keep{args.keep}.pt")

    v1_run, _ = served_model(42)
    v1_runs = {}
    scratch, warm = {}, {}
    for seed in args.seeds:
        run = work / "runs" / f"scratch-{seed}"
        if not (run / "final.json").exists():
            cli(
                "train", "--dataset", "retrain", "--out", str(run), *base, *scratch_flags, "--set", f"train.seed={seed}"
            )
        scratch[seed] = run
        v1_runs[seed], init = served_model(seed if args.v1_per_seed else 42)
        wrun = work / "runs" / f"warm-{args.recipe.stem}{suffix}-{seed}"
        if wrun.exists():
            shutil.rmtree(wrun)
        res = cli(
            "train",
            "--dataset",
            "retrain",
            "--out",
            str(wrun),
            "--init",
            str(init),
            "--recipe",
            str(args.recipe),
            *warm_base,
            "--set",
            f"train.seed={seed}",
            *[a for kv in args.warm_set for a in ("--set", kv)],
        )
        warm[seed] = wrun
        print(f"seed {seed}: scratch {final(run)}; warm {final(wrun)} {res['stderr_tail']}", flush=True)

    per_seed = {}
    for seed in args.seeds:
        s_curve, w_curve = curve(scratch[seed]), curve(warm[seed])
        s_best = max(v for _, v in s_curve)
        t_s, t_w = time_to(s_curve, s_best), time_to(w_curve, s_best)
        per_seed[str(seed)] = {
            "from_scratch": final(scratch[seed]),
            "warm_start": final(warm[seed]),
            "target": round(s_best, 4),
            "from_scratch_seconds": t_s,
            "warm_start_seconds_to_target": t_w,
            "ratio": round(t_w / t_s, 3) if t_w is not None and t_s else None,
            # Epochs cost the same in both runs (same data, model, batch): their ratio is the
            # compute ratio, free of the load on a shared machine.
            "from_scratch_epochs": epochs_to(s_curve, s_best),
            "warm_start_epochs_to_target": epochs_to(w_curve, s_best),
            "warm_curve": w_curve,
        }
    s_bests = [max(v for _, v in curve(scratch[s])) for s in args.seeds]
    w_bests = [max(v for _, v in curve(warm[s])) for s in args.seeds]
    target = statistics.fmean(s_bests)
    t_scratch = statistics.fmean(time_to(curve(scratch[s]), b) for s, b in zip(args.seeds, s_bests, strict=True))
    e_scratch = statistics.fmean(epochs_to(curve(scratch[s]), b) for s, b in zip(args.seeds, s_bests, strict=True))
    w_mean = mean_curve([best_so_far(curve(warm[s])) for s in args.seeds])
    t_warm = time_to(w_mean, target)
    gap = statistics.fmean(w_bests) - target
    result = {
        "command": "flock /tmp/seqrec-cpu0.lock taskset -c 0 python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "dataset": args.dataset,
        "split": {
            "T1": t1,
            "T2": t2,
            "quantiles": args.cuts,
            "v1_trained_on": f"events before T1 ({offline.height})",
            "retrained_on": f"events before T2 ({retrain.height}: the offline log + the live events to T2)",
        },
        "model": "sasrec " + " ".join(SASREC) + " --set train.num_threads=1",
        "v1": final(v1_run),
        "v1_per_seed": {str(s): final(r) for s, r in v1_runs.items()} if args.v1_per_seed else None,
        "from_scratch_settings": " ".join(scratch_flags) + " (lr 1e-3 constant)",
        "warm_start_recipe": str(args.recipe),
        "warm_start_keep": args.keep,
        "warm_start_set": args.warm_set,
        "warm_start_recipe_text": args.recipe.read_text(),
        "seeds": args.seeds,
        "per_seed": per_seed,
        "from_scratch_best_valid_ndcg@10": spread(s_bests),
        "warm_start_best_valid_ndcg@10": spread(w_bests),
        "from_scratch_test_ndcg@10": spread([final(scratch[s])["test_ndcg@10"] for s in args.seeds]),
        "warm_start_test_ndcg@10": spread([final(warm[s])["test_ndcg@10"] for s in args.seeds]),
        "mean_of_seeds": {
            "target": round(target, 4),
            "from_scratch_seconds_to_best": round(t_scratch, 1),
            "warm_start_seconds_to_target": round(t_warm, 1) if t_warm is not None else None,
            "ratio": round(t_warm / t_scratch, 3) if t_warm is not None else None,
            "from_scratch_epochs_to_best": round(e_scratch, 1),
            "warm_start_epochs_to_target": epochs_to(w_mean, target),
            "epoch_ratio": round(epochs_to(w_mean, target) / e_scratch, 3) if t_warm is not None else None,
            "warm_start_best_minus_target": round(gap, 4),
            "met": t_warm is not None and t_warm <= 0.5 * t_scratch,
            "how": "target = mean over seeds of the from-scratch best; from-scratch time = mean of their times "
            "to their best; warm-start time = first epoch where the mean over seeds of the warm runs' best-so-far "
            "valid NDCG@10 reaches the target, at the mean elapsed time of that epoch",
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("from_scratch_best_valid_ndcg@10", "warm_start_best_valid_ndcg@10", "mean_of_seeds")
            },
            indent=2,
        )
    )
    for seed, p in per_seed.items():
        print(seed, {k: v for k, v in p.items() if k != "warm_curve"})


if __name__ == "__main__":
    main()
