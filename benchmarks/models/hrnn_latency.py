"""Served cost of the HRNN graph (its recurrence unrolled over max_len steps) against GRU4Rec.

For each bundle: the ONNX session's load time, then `Bundle.user_vectors` (what a recommend
request runs for the model, in process) for one user at several history lengths, and a batch
of 32 full-length users; median and p99 of `--calls` calls on real ML-100K histories with
their event times (a bundle that reads no times is given the items only).

    python -m benchmarks.models.hrnn_latency --bundle artifacts/hrnn-ml-100k --bundle artifacts/gru4rec-ml-100k
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from app.bundles.bundle import Bundle
from benchmarks.common import write_result
from training.data import prepare


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {"p50_ms": round(float(np.median(a)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, action="append", required=True)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--lengths", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--name", default="hrnn-latency")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    data = prepare("ml-100k")
    users = [u for u in range(data.num_users) if len(data.sequence(u)) >= max(args.lengths)]
    out: dict = {"calls": args.calls, "note": args.note, "results": {}}
    for path in args.bundle:
        t0 = time.perf_counter()
        b = Bundle.load(path)
        row: dict = {"model": b.model, "max_len": b.max_len, "dim": b.dim, "load_s": round(time.perf_counter() - t0, 3)}

        def call(hs: list[np.ndarray], ts: list[np.ndarray], bundle: Bundle = b) -> float:
            t = time.perf_counter()
            bundle.user_vectors(hs, ts if bundle.needs_times else None)
            return time.perf_counter() - t

        for n in args.lengths:
            hs = [data.sequence(u)[-n:] for u in users]
            ts = [data.times(u)[-n:] for u in users]  # type: ignore[index]
            call(hs[:1], ts[:1])  # warm-up
            row[f"one_user_len{n}"] = _ms([call([hs[i % len(hs)]], [ts[i % len(ts)]]) for i in range(args.calls)])
        n = max(args.lengths)
        hs = [data.sequence(u)[-n:] for u in users[:32]]
        ts = [data.times(u)[-n:] for u in users[:32]]  # type: ignore[index]
        row[f"batch32_len{n}"] = _ms([call(hs, ts) for _ in range(max(10, args.calls // 10))])
        out["results"][path.name] = row
        print(row, file=sys.stderr, flush=True)
    print(write_result(args.name, out))


if __name__ == "__main__":
    main()
