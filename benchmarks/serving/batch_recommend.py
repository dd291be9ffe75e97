"""Batch lists (`seqrec recommend`): users/s for every user of a prepared dataset, k = 50.

    python -m benchmarks.serving.batch_recommend --bundle artifacts/bench-sasrec-ml1m --dataset ml-1m \\
        --k 50 --passes 5 --repeats 3 --out benchmarks/results/serving/batch_recommend.json

Each configuration (processes x ONNX Runtime intra-op threads) runs `recommend_batch` over the
dataset's users `--passes` times in one run (so process start and bundle loading are paid once, as
for a large campaign), `--repeats` times; reported: users/s of the whole run (start to renamed
Parquet file) per repeat and their median, and the same for one pass (a run of the dataset once,
what a small shop pays). The configurations are interleaved repeat by repeat so drift hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.machine import machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="An exported bundle trained on --dataset.")
    ap.add_argument("--dataset", default="ml-1m", help="A prepared dataset: its users' whole sequences.")
    ap.add_argument("--k", type=int, default=50, help="List length.")
    ap.add_argument("--passes", type=int, default=5, help="Times the dataset's users are listed in one run.")
    ap.add_argument("--repeats", type=int, default=3, help="Runs per configuration.")
    ap.add_argument(
        "--configs", nargs="+", default=["2x1", "1x2", "1x1"], help="PROCESSESxTHREADS (ONNX intra-op threads)."
    )
    ap.add_argument("--out", type=Path, help="Write the results here (JSON).")
    args = ap.parse_args()

    from app.settings import Settings
    from training.batch_recommend import dataset_histories, recommend_batch

    total, it = dataset_histories(args.dataset)
    histories = list(it)
    settings = Settings(bundles=[args.bundle])
    runs: dict[str, dict[str, list[float]]] = {c: {"users_per_s": [], "one_pass_users_per_s": []} for c in args.configs}
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        for r in range(args.repeats):
            for cfg in args.configs if r % 2 == 0 else args.configs[::-1]:
                workers, threads = (int(x) for x in cfg.split("x"))
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
                    runs[cfg][key].append(round(got.users / seconds, 1))
                    print(cfg, key, runs[cfg][key][-1], file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "benchmark": "batch_recommend",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # the cores it ran on (taskset)
        "bundle": args.bundle.name,
        "dataset": args.dataset,
        "users": total,
        "k": args.k,
        "passes": args.passes,
        "configs": {
            cfg: {
                "processes": int(cfg.split("x")[0]),
                "onnx_threads": int(cfg.split("x")[1]),
                **v,
                "median_users_per_s": statistics.median(v["users_per_s"]),
                "median_one_pass_users_per_s": statistics.median(v["one_pass_users_per_s"]),
            }
            for cfg, v in runs.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
