"""Batch lists (`seqrec recommend`): users/s for every user of a prepared dataset, k = 50.

    python -m benchmarks.serving.batch_recommend --bundle artifacts/bench-sasrec-ml1m --dataset ml-1m \\
        --k 50 --passes 5 --repeats 3 --out benchmarks/results/serving/batch_recommend.json

Each configuration (processes x ONNX Runtime intra-op threads) runs `recommend_batch` over the
dataset's users `--passes` times in one run (so process start and bundle loading are paid once, as
for a large campaign), `--repeats` times; reported: users/s of the whole run (start to renamed
Parquet file) per repeat and their median, and the same for one pass (a run of the dataset once,
what a small shop pays). Every run is a fresh interpreter (the dataset is read before the clock
starts); the configurations are interleaved repeat by repeat so drift hits all alike.

`--before-root DIR`: the same runs with the code of another tree too (e.g. `git archive <commit> |
tar -x -C DIR`), interleaved with this tree's, so a change is measured against what it replaced in
the same hour. The cores are the ones this process may use: `taskset -c 1 python -m ...` for one
core, nothing for all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.machine import machine_info

ROOT = Path(__file__).resolve().parents[2]


def measure(args: argparse.Namespace) -> None:
    """One run (`--measure`, in a fresh interpreter whose imports resolve to the tree under test):
    users/s of `--passes` passes and of one pass, as one JSON line."""
    from app.settings import Settings
    from training.batch_recommend import dataset_histories, recommend_batch

    total, it = dataset_histories(args.dataset)
    histories = list(it)
    workers, threads = (int(x) for x in args.measure.split("x"))
    settings = Settings(bundles=[args.bundle])
    got_rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        for passes, key in ((args.passes, "users_per_s"), (1, "one_pass_users_per_s")):
            t = time.perf_counter()
            got = recommend_batch(
                args.bundle,
                histories * passes,
                Path(tmp) / "lists.parquet",
                k=args.k,
                workers=workers,
                threads=threads,
                settings=settings,
                progress=None,
            )
            seconds = time.perf_counter() - t
            assert got.users == total * passes and got.rows == got.users * args.k
            got_rates[key] = round(got.users / seconds, 1)
    import training.batch_recommend as code

    print(json.dumps({"users": total, "tree": str(Path(code.__file__).resolve().parents[1]), **got_rates}))


def run_once(root: Path, cfg: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of `cfg` with the code under `root`, in a child interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", cfg, "--bundle", str(args.bundle.resolve())]
    cmd += ["--dataset", args.dataset, "--k", str(args.k), "--passes", str(args.passes)]
    # The code from `root`, the data (prepared datasets, relative paths) from this tree.
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{root}: the run of {cfg} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tree"] == str(root), f"the run imported {result['tree']}, not {root}"
    return result


def summary(runs: dict[str, list[float]], cfg: str) -> dict[str, Any]:
    workers, threads = (int(x) for x in cfg.split("x"))
    return {
        "processes": workers,
        "onnx_threads": threads,
        **runs,
        "median_users_per_s": statistics.median(runs["users_per_s"]),
        "median_one_pass_users_per_s": statistics.median(runs["one_pass_users_per_s"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle",
        type=Path,
        default=ROOT / "artifacts" / "bench-sasrec-ml1m",
        help="An exported bundle trained on --dataset (default: the Makefile's BENCH_BUNDLE).",
    )
    ap.add_argument("--dataset", default="ml-1m", help="A prepared dataset: its users' whole sequences.")
    ap.add_argument("--k", type=int, default=50, help="List length.")
    ap.add_argument("--passes", type=int, default=5, help="Times the dataset's users are listed in one run.")
    ap.add_argument("--repeats", type=int, default=3, help="Runs per configuration.")
    ap.add_argument(
        "--configs", nargs="+", default=["2x1", "1x2", "1x1"], help="PROCESSESxTHREADS (ONNX intra-op threads)."
    )
    ap.add_argument("--before-root", type=Path, help="Another tree whose code runs the same configurations.")
    ap.add_argument("--out", type=Path, help="Write the results here (JSON).")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # one run, in a child interpreter
    args = ap.parse_args()
    if args.measure:
        measure(args)
        return
    if not (args.bundle / "manifest.json").is_file():
        sys.exit(f"{args.bundle}: no bundle (make artifacts/bench-sasrec-ml1m trains and exports one)")

    trees = {"after": ROOT} | ({"before": args.before_root.resolve()} if args.before_root else {})
    plan = [(tree, cfg) for tree in trees for cfg in args.configs]
    runs = {(tree, cfg): {"users_per_s": [], "one_pass_users_per_s": []} for tree, cfg in plan}
    total = 0
    for r in range(args.repeats):
        for tree, cfg in plan if r % 2 == 0 else plan[::-1]:
            got = run_once(trees[tree], cfg, args)
            total = got["users"]
            for key in ("users_per_s", "one_pass_users_per_s"):
                runs[(tree, cfg)][key].append(got[key])
            print(tree, cfg, got, file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "benchmark": "batch_recommend",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.serving.batch_recommend " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # the cores it ran on (taskset)
        "bundle": args.bundle.name,
        "dataset": args.dataset,
        "users": total,
        "k": args.k,
        "passes": args.passes,
        "configs": {cfg: summary(runs[("after", cfg)], cfg) for cfg in args.configs},
    }
    if args.before_root:
        result["before"] = {
            "tree": str(args.before_root),
            "configs": {cfg: summary(runs[("before", cfg)], cfg) for cfg in args.configs},
        }
        result["speedup_median"] = {
            cfg: round(
                result["configs"][cfg]["median_users_per_s"] / result["before"]["configs"][cfg]["median_users_per_s"],
                3,
            )
            for cfg in args.configs
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
