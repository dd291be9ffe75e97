"""What explain=true adds to one recommendation: the N-event ablation (one batched encoder call).

    flock /tmp/seqrec-cpu.lock python benchmarks/explain_latency.py --bundle artifacts/sasrec-ml1m \
        --out benchmarks/results/explain_latency.json

Real ML-1M histories (the newest `--history` events of each user, as the service reads them
with SEQREC_MAX_HISTORY), one user at a time on one thread, in process (no HTTP): the time of the
plain path (user vector + top-10) and, separately, of explain() on its answer, per user; p50/p90.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.bundle import Bundle
from app.explain import explain
from benchmarks.machine import machine_info


def ml1m_histories(data_dir: Path, bundle: Bundle) -> list[np.ndarray]:
    """Every user's ML-1M sequence (ml-1m.sasrec.txt: `user item` lines in time order) as model indices."""
    seqs: dict[str, list[str]] = {}
    with (data_dir / "ml-1m" / "ml-1m.sasrec.txt").open() as fh:
        for line in fh:
            u, i = line.split()
            seqs.setdefault(u, []).append(i)
    return [bundle.encode(s) for s in seqs.values()]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--history", type=int, nargs="+", default=[50, 200], help="events the service reads per user")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    bundle = Bundle.load(args.bundle)
    rng = np.random.default_rng(0)
    hists = [h for h in ml1m_histories(args.data_dir, bundle) if len(h) >= 2]
    pick = rng.choice(len(hists), size=min(args.users, len(hists)), replace=False)
    rows = []
    for cap in args.history:
        users = [hists[i][-cap:] for i in pick]
        for n in args.n:
            base, extra = [], []
            for h in users:
                t0 = time.perf_counter()
                labels, _ = bundle.index.search(bundle.user_vectors([h]), args.k, [h])
                t1 = time.perf_counter()
                explain(bundle, h, labels[0], n)
                t2 = time.perf_counter()
                base.append(t1 - t0)
                extra.append(t2 - t1)
            row = {
                "history_events": cap,
                "median_history": float(np.median([len(h) for h in users])),
                "explain_n": n,
                "recommend_p50_ms": pct(base, 50),
                "explain_extra_p50_ms": pct(extra, 50),
                "explain_extra_p90_ms": pct(extra, 90),
                "extra_over_recommend_p50": pct(extra, 50) / pct(base, 50),
            }
            rows.append(row)
            print(json.dumps(row))
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
        "bundle": {"name": bundle.name, "model": bundle.model, "max_len": bundle.max_len, "dim": bundle.dim},
        "users": len(pick),
        "k": args.k,
        "machine": machine_info(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
