"""`seqrec prepare` against a plain polars pass over the same synthetic shop log.

    python -m benchmarks.scale.generate --size M --out /tmp/seqrec-scale
    python -m benchmarks.scale.prepare --size M [--data /tmp/seqrec-scale] [--no-baseline]
    python -m benchmarks.scale.prepare --summary     # the table of docs/scale.md, growth exponents

Each pass runs in a process of its own, so its peak resident memory (ru_maxrss) is its alone:

- seqrec: `training.data.registry.prepare_files` with the defaults of `seqrec prepare --file`
  (5-core users and items, users with >= 3 events, every id checked against the service's
  rule, ties/duplicates/placeholder users counted, the cache written), into a fresh cache.
- polars: what a short script does with the same log and nothing more: read it, 5-core filter
  (counts over user and item, until nothing changes), map ids to 0..n-1 in sorted order, sort by
  user and time (stable), and write the per-user sequences as CSR arrays (.npy).

The wall time is the pass itself (after the interpreter and imports are up). The result goes
to benchmarks/results/scale/prepare-<size>.json with the machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info
from benchmarks.scale.generate import SIZES

RESULTS = Path(__file__).resolve().parents[1] / "results" / "scale"
CORE = 5


def polars_pass(path: Path, out: Path) -> dict[str, int]:
    """The plain polars pass: k-core, sorted id maps, per-user sequences in time order."""
    import polars as pl

    df = pl.read_parquet(path, columns=["user_id", "item_id", "timestamp"]).with_row_index("r")
    while True:
        kept = df.filter((pl.len().over("user_id") >= CORE) & (pl.len().over("item_id") >= CORE))
        if kept.height == df.height:
            break
        df = kept
    users = df.select(pl.col("user_id").unique().sort()).with_row_index("u")
    items = df.select(pl.col("item_id").unique().sort()).with_row_index("i", offset=1)
    df = df.join(users, on="user_id").join(items, on="item_id").sort(["u", "timestamp", "r"])
    offsets = np.zeros(users.height + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(df["u"].to_numpy(), minlength=users.height))
    np.save(out / "offsets.npy", offsets)
    np.save(out / "items.npy", df["i"].to_numpy().astype(np.int32))
    np.save(out / "timestamps.npy", df["timestamp"].to_numpy())
    return {"users": users.height, "items": items.height, "interactions": df.height}


def seqrec_pass(path: Path, out: Path) -> dict[str, int]:
    from training.data.files import FileOptions
    from training.data.registry import prepare_files

    data = prepare_files([path], FileOptions(), name="shop", cache_dir=out, force=True)
    return {"users": data.num_users, "items": data.num_items, "interactions": data.num_interactions}


def child(which: str, path: Path) -> None:
    """Run one pass in this process and print its time, peak memory and counts as JSON."""
    with tempfile.TemporaryDirectory(prefix="seqrec-scale-") as out:
        t0 = time.perf_counter()
        counts = (seqrec_pass if which == "seqrec" else polars_pass)(path, Path(out))
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_gib": round(peak / 2**30, 2), **counts}))


def run_child(which: str, path: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scale.prepare", "--child", which, "--file", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"failed": res.returncode, "stderr": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(size: str, data: Path, baseline: bool, repeat: int) -> dict:
    path = data / f"shop-{size}.parquet"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; python -m benchmarks.scale.generate --size {size} --out {data}")
    events, catalogue = SIZES[size]
    runs: dict[str, list[dict]] = {"seqrec": [], "polars": []}
    for _ in range(repeat):  # interleaved, so both passes see the same machine load
        runs["seqrec"].append(run_child("seqrec", path))
        if baseline:
            runs["polars"].append(run_child("polars", path))
    out = {
        "command": " ".join(["python", "-m", "benchmarks.scale.prepare", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "size": size,
        "events": events,
        "catalogue": catalogue,
        "file": path.name,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "runs": {k: v for k, v in runs.items() if v},
    }
    for k, v in runs.items():
        ok = [r for r in v if "seconds" in r]
        if ok:
            out[k] = min(ok, key=lambda r: r["seconds"])  # the best run: the least disturbed by others
    if "seqrec" in out and "polars" in out:
        out["ratio"] = round(out["seqrec"]["seconds"] / out["polars"]["seconds"], 2)
    return out


def summary(results: Path = RESULTS) -> str:
    """A markdown table of every prepare-<size>.json, with growth exponents between sizes."""
    rows = []
    for size in SIZES:
        f = results / f"prepare-{size}.json"
        if f.is_file():
            rows.append(json.loads(f.read_text()))
    lines = [
        "| size | events | seqrec s | peak GiB | polars s | peak GiB | ratio | exponent seqrec | exponent polars |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    prev = None
    for r in rows:
        s, p = r.get("seqrec", {}), r.get("polars", {})
        exps = ["", ""]
        if prev is not None:
            for j, k in enumerate(("seqrec", "polars")):
                a, b = prev.get(k, {}).get("seconds"), r.get(k, {}).get("seconds")
                if a and b:
                    exps[j] = f"{math.log(b / a) / math.log(r['events'] / prev['events']):.2f}"
        lines.append(
            f"| {r['size']} | {r['events']:,} | {s.get('seconds', '-')} | {s.get('peak_rss_gib', '-')} | "
            f"{p.get('seconds', '-')} | {p.get('peak_rss_gib', '-')} | {r.get('ratio', '-')} | {exps[0]} | {exps[1]} |"
        )
        prev = r
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES))
    ap.add_argument("--data", type=Path, default=Path("/tmp/seqrec-scale"), help="folder of shop-<size>.parquet")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True, help="also time polars")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each pass; the best is reported")
    ap.add_argument("--summary", action="store_true", help="print the table of all sizes measured")
    ap.add_argument("--child", choices=["seqrec", "polars"], help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.file)
        return 0
    if a.summary:
        print(summary())
        return 0
    if not a.size:
        ap.error("--size or --summary")
    out = measure(a.size, a.data, a.baseline, a.repeat)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"prepare-{a.size}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out.get(k) for k in ("size", "seqrec", "polars", "ratio")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
