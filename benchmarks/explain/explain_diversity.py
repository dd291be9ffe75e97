"""The diversity trade-off on ML-1M: NDCG@10 / HR@10 against intra-list diversity and coverage.

    flock /tmp/seqrec-cpu.lock python -m benchmarks.explain.explain_diversity --bundle artifacts/sasrec-ml1m \
        --out benchmarks/results/explain/explain_diversity.json

Leave-one-out test on ml-1m.sasrec.txt (every user: history = all events but the last, target =
the last), seen items excluded, the bundle's own re-ranking (app/serving/diversity.py) exactly as
GET /recommend?diversify=&max_per_cluster= applies it. Per setting:
  NDCG@10, HR@10       against the held-out item
  ILD@10               intra-list diversity: mean pairwise (1 - cosine) of the list's item vectors
  genre ILD@10         mean pairwise (1 - Jaccard) of the listed movies' genres (movies.dat)
  coverage             distinct items recommended to all users / catalogue size
  clusters/list        distinct item clusters per list
Writes the JSON, a markdown table and a PNG plot next to it.
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

from app.bundles.loader import load_bundle
from app.serving.diversity import ListShape
from benchmarks.explain.explain_latency import ml1m_histories
from benchmarks.machine import machine_info

SETTINGS: list[tuple[float | None, int | None]] = [
    (None, None),
    (0.9, None),
    (0.7, None),
    (0.5, None),
    (0.3, None),
    (0.1, None),
    (None, 2),
    (None, 1),
    (0.7, 2),
]


def ml1m_genres(data_dir: Path) -> dict[str, frozenset[str]]:
    """SASRec item id -> genre set (sas_to_original_items.txt -> movies.dat, latin-1)."""
    genres: dict[str, frozenset[str]] = {}
    with (data_dir / "ml-1m" / "movies.dat").open(encoding="latin-1") as fh:
        for line in fh:
            mid, _, g = line.rstrip("\n").split("::")
            genres[mid] = frozenset(g.split("|"))
    out: dict[str, frozenset[str]] = {}
    with (data_dir / "ml-1m" / "sas_to_original_items.txt").open() as fh:
        for line in fh:
            sid, mid = line.split()
            if mid in genres:
                out[sid] = genres[mid]
    return out


def label(lam: float | None, cap: int | None) -> str:
    parts = ([f"diversify={lam}"] if lam is not None else []) + ([f"max_per_cluster={cap}"] if cap else [])
    return "&".join(parts) or "plain top-10"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "../shared/data")
    ap.add_argument("--users", type=int, default=0, help="0 = every user")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    if bundle.clusters is None:
        raise SystemExit(f"{args.bundle} has no clusters.npy: export it again")
    genres = ml1m_genres(args.data_dir)
    gsets = [genres.get(i, frozenset()) for i in bundle.item_ids]
    hists = [h for h in ml1m_histories(args.data_dir, bundle) if len(h) >= 2]
    if args.users:
        hists = hists[: args.users]
    k = 10
    unit_all = bundle.spaces["output"].unit(np.arange(1, len(bundle.item_ids) + 1))
    # The widest candidate pool once per user; each setting takes the prefix the service would fetch.
    widest = max(ListShape(lam, cap).pool(bundle, k) for lam, cap in SETTINGS)
    pools = []
    for start in range(0, len(hists), 256):
        chunk = hists[start : start + 256]
        users = bundle.user_vectors([h[:-1] for h in chunk])
        for h, u in zip(chunk, users, strict=True):
            labels, scores = bundle.index.search(u[None], widest, [h[:-1]])
            pools.append((labels[0], scores[0], int(h[-1])))
    rows = []
    t0 = time.perf_counter()
    for lam, cap in SETTINGS:
        shape = ListShape(lam, cap)
        ndcg = hr = ild = gild = ncl = 0.0
        shown: set[int] = set()
        size = shape.pool(bundle, k)
        for labels, scores, target in pools:
            got, _ = shape.rerank(bundle, labels[:size], scores[:size], k)
            hit = np.flatnonzero(got == target)
            if len(hit):
                hr += 1
                ndcg += 1 / np.log2(hit[0] + 2)
            u = unit_all[got - 1]
            off = ~np.eye(len(got), dtype=bool)
            ild += float((1 - u @ u.T)[off].mean())
            g = [gsets[i - 1] for i in got]
            jac = np.array([[len(a & b) / max(1, len(a | b)) for b in g] for a in g])
            gild += float((1 - jac)[off].mean())
            ncl += len(np.unique(bundle.clusters.of(got)))
            shown.update(got.tolist())
        n = len(pools)
        row = {
            "setting": label(lam, cap),
            "diversify": lam,
            "max_per_cluster": cap,
            "ndcg@10": ndcg / n,
            "hr@10": hr / n,
            "ild@10": ild / n,
            "genre_ild@10": gild / n,
            "coverage": len(shown) / len(bundle.item_ids),
            "clusters_per_list": ncl / n,
        }
        rows.append(row)
        print(json.dumps(row))
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
        "bundle": {"name": bundle.name, "model": bundle.model, "metrics": bundle.manifest.get("metrics")},
        "num_clusters": bundle.clusters.count,
        "users": len(pools),
        "rerank_seconds_all_settings": time.perf_counter() - t0,
        "machine": machine_info(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_table(result, args.out.with_suffix(".md"))
    plot(rows, args.out.with_suffix(".png"), bundle.name)


def write_table(result: dict, path: Path) -> None:
    lines = [
        f"# Diversity trade-off, ML-1M ({result['date']})",
        "",
        f"Bundle `{result['bundle']['name']}` ({result['bundle']['model']}), {result['users']} users "
        f"(leave-one-out test), {result['num_clusters']} item clusters; CPU {result['machine']['cpu']}.",
        f"Command: `{result['command']}`",
        "",
        "| setting | NDCG@10 | HR@10 | ILD@10 | genre ILD@10 | coverage | clusters/list |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['setting']} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} | {r['ild@10']:.3f} | "
            f"{r['genre_ild@10']:.3f} | {r['coverage']:.3f} | {r['clusters_per_list']:.2f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "ild@10", "intra-list diversity (1 - cosine)"), (axes[1], "coverage", "coverage")):
        mmr = [r for r in rows if r["max_per_cluster"] is None]
        ax.plot([r[key] for r in mmr], [r["ndcg@10"] for r in mmr], "o-", label="MMR (λ = 1 … 0.1)")
        for r in mmr:
            ax.annotate(str(r["diversify"] if r["diversify"] is not None else 1.0), (r[key], r["ndcg@10"]), fontsize=8)
        cap = [r for r in rows if r["max_per_cluster"] is not None]
        ax.plot([r[key] for r in cap], [r["ndcg@10"] for r in cap], "s", label="max_per_cluster (+ MMR)")
        for r in cap:
            ax.annotate(r["setting"].replace("max_per_cluster", "cap"), (r[key], r["ndcg@10"]), fontsize=7)
        ax.set_xlabel(title)
        ax.set_ylabel("NDCG@10")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ML-1M diversity trade-off ({name})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
