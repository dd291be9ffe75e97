"""Summarise a finished `seqrec train` run directory into benchmarks/results/<name>.json.

Records the command that produced the run, per-epoch wall times, time to the best epoch, the
best epoch's validation/test metrics, and the machine's load (the numbers are only comparable
between runs on equally loaded machines).

    python -m benchmarks.training.summarize_run RUN_DIR --name train-gru4rec-ml-1m-cpu --command "seqrec train ..."
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path


def summarize(run_dir: Path, command: str, note: str = "") -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    cfg = json.loads((run_dir / "config.json").read_text())
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else None
    times = [r["epoch_seconds"] for r in rows]
    return {
        "command": command,
        "note": note,
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "model_config": cfg["model_config"],
        "train_config": cfg["train_config"],
        "epochs_run": len(rows),
        "epoch_seconds": times,
        "median_epoch_seconds": statistics.median(times) if times else None,
        "best_epoch": final["best_epoch"] if final else None,
        "seconds_to_best": final["seconds_to_best"] if final else None,
        "valid": final["valid"] if final else None,
        "test": final["test"] if final else None,
        "device": final["device"] if final else None,
        "history": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "training")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(summarize(args.run_dir, args.command, args.note), indent=2))
    print(path)


if __name__ == "__main__":
    main()
