"""Amazon Office, leave-one-out, full ranking: SASRec vs UniSRec (transductive / inductive,
with and without pre-training on ML-1M + ML-100K text). Collects the runs' final.json into
benchmarks/results/training/unisrec_office.json, next to the command that produced each run.

Runs: the commands in VARIANTS / PRETRAIN below, each under `nice -n 10` with
OMP_NUM_THREADS=1 and SEQREC_CACHE_DIR set (a CPU shared by several jobs).
Then:
  PYTHONPATH=. python -m benchmarks.training.unisrec_office --runs $RUNS
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

VARIANTS = {
    "sasrec": "seqrec train --model sasrec --dataset office --max-len 50 --dropout 0.5 --lr 0.002 --max-minutes 60 "
    "--patience 10 --out {runs}/sasrec",
    "sasrec-128": "seqrec train --model sasrec --dataset office --max-len 50 --dim 128 --dropout 0.5 --lr 0.002 "
    "--max-minutes 30 --patience 10 --out {runs}/sasrec-128",
    "uni-trans": "seqrec train --model unisrec --dataset office --set mode=transductive --max-minutes 28 "
    "--patience 8 --out {runs}/uni-trans",
    "uni-ind": "seqrec train --model unisrec --dataset office --set mode=inductive --lr 0.003 --dropout 0.3 "
    "--max-minutes 35 --patience 8 --out {runs}/uni-ind",
    "uni-trans-128": "seqrec train --model unisrec --dataset office --set mode=transductive --dim 128 "
    "--max-minutes 25 --patience 8 --out {runs}/uni-trans-128",
    "uni-trans-pt": "seqrec train --model unisrec --dataset office --set mode=transductive "
    "--init {runs}/pretrained-ep2.pt --max-minutes 38 --patience 8 --out {runs}/uni-trans-pt",
    "uni-ind-pt": "seqrec train --model unisrec --dataset office --set mode=inductive --lr 0.003 --dropout 0.3 "
    "--init {runs}/pretrained-ep2.pt --max-minutes 38 --patience 8 --out {runs}/uni-ind-pt",
    "uni-ind-128": "seqrec train --model unisrec --dataset office --set mode=inductive --dim 128 --lr 0.003 "
    "--dropout 0.3 --max-minutes 30 --patience 8 --out {runs}/uni-ind-128",
}
PRETRAIN = (
    "seqrec pretrain --datasets ml-1m,ml-100k --epochs 20 --max-minutes 14 --set dropout=0.2 --out {runs}/pretrain"
    "  (stopped by hand after epoch 2 to free the CPU; {runs}/pretrained-ep2.pt = its epoch-2 checkpoint)"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/office"))
    ap.add_argument("--pt-minutes", type=float, default=20)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training/unisrec_office.json"))
    args = ap.parse_args()
    # Runs are collected over several sessions: a row whose run directory is gone is kept from
    # the existing results file.
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    rows = dict(old.get("results", {}))
    for name, cmd in VARIANTS.items():
        final = args.runs / name / "final.json"
        if not final.is_file():
            continue
        f = json.loads(final.read_text())
        rows[name] = {
            "test": {k: round(v, 4) for k, v in f["test"].items() if k in ("hr@10", "ndcg@10", "hr@20", "ndcg@20")},
            "valid_ndcg@10": round(f["valid"]["ndcg@10"], 4),
            "best_epoch": f["best_epoch"],
            "epochs_run": f["epochs_run"],
            "train_seconds": f["train_seconds"],
            "command": cmd.format(runs=args.runs, pt_minutes=args.pt_minutes),
        }
    # Against the best SASRec we trained on this split (dim 64 or 128), not a convenient one.
    sasrec = [r["test"]["ndcg@10"] for k, r in rows.items() if k.startswith("sasrec")]
    if sasrec:
        base = max(sasrec)
        for r in rows.values():
            r["ndcg@10_vs_sasrec"] = round(r["test"]["ndcg@10"] / base - 1, 4) if base else None
    pt_log = args.runs / "pretrain" / "pretrain_metrics.jsonl"
    out = {
        "what": "Amazon Office 5-core, leave-one-out (last item test, 2nd-last validation), full ranking over "
        "all 2,420 items, history items excluded; early stopping on validation NDCG@10",
        "results": rows,
        "pretrain": {
            "command": PRETRAIN.format(runs=args.runs),
            "epochs": [json.loads(x) for x in pt_log.read_text().splitlines()] if pt_log.is_file() else None,
        }
        if pt_log.is_file() or "pretrain" not in old
        else old["pretrain"],
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs shared by several jobs, "
        f"{platform.system()} {platform.release()}; all runs CPU, budget-capped (--max-minutes)",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
