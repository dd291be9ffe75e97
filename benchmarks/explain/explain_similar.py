"""Similar items on ML-1M: genre overlap@10 of each vector space, and how collapsed each space is.

    flock /tmp/seqrec-cpu.lock python -m benchmarks.explain.explain_similar \
        --bundle artifacts/sasrec-ml1m --bundle artifacts/bert4rec-ml1m \
        --out benchmarks/results/explain/explain_similar.json

For every catalogue item, its 10 nearest items (the item itself excluded) in a space, searched
exactly as GET /items/{id}/similar does (cosine on unit vectors), plus the raw dot product for
comparison. Genres come from movies.dat (via sas_to_original_items.txt). Per space:
  overlap@10          share of the 10 neighbours with at least one genre in common with the item
  jaccard@10          mean genre Jaccard between the item and its neighbours
  mean_cos            mean pairwise cosine over all item pairs (near 1 = the collapse)
Spaces: each bundle's `output` (the item vectors it scores with) and every exported extra space
(BERT4Rec `layers4`), that space with its mean vector removed (`-centred`), each of its four
hidden states alone (`layers4[0]` = the oldest of the four), and random items.
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

from app.bundles.index import unit_rows
from app.bundles.loader import load_bundle
from benchmarks.explain.explain_diversity import ml1m_genres
from benchmarks.machine import machine_info

K = 10


def neighbours(vecs: np.ndarray, cosine: bool) -> np.ndarray:
    """(N, D) -> (N, K) row indices of each row's K best others."""
    x = unit_rows(vecs) if cosine else vecs.astype(np.float32)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def score(nbrs: np.ndarray, gsets: list[frozenset[str]]) -> tuple[float, float]:
    overlap = jac = 0.0
    for i, row in enumerate(nbrs):
        a = gsets[i]
        overlap += np.mean([bool(a & gsets[j]) for j in row])
        jac += np.mean([len(a & gsets[j]) / max(1, len(a | gsets[j])) for j in row])
    return overlap / len(nbrs), jac / len(nbrs)


def mean_cos(vecs: np.ndarray) -> float:
    u = unit_rows(vecs)
    n = len(u)
    s = u.sum(axis=0)
    return float((s @ s - n) / (n * (n - 1)))  # mean over i != j of <u_i, u_j>


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, action="append", required=True)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "../shared/data")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    genres = ml1m_genres(args.data_dir)
    rows = []
    gsets: list[frozenset[str]] = []
    for path in args.bundle:
        b = load_bundle(path)
        gsets = [genres.get(i, frozenset()) for i in b.item_ids]
        spaces: dict[str, np.ndarray] = {"output": np.load(path / "item_vectors.npy")}
        for name, meta in (b.manifest.get("item_spaces") or {}).items():
            spaces[name] = np.load(path / meta["file"])
            spaces[f"{name}-centred"] = spaces[name] - spaces[name].mean(axis=0)
            if name == "layers4":  # each hidden state alone (oldest layer first), d dims each
                d = spaces[name].shape[1] // 4
                for layer in range(4):
                    spaces[f"{name}[{layer}]"] = spaces[name][:, layer * d : (layer + 1) * d]
        for name, vecs in spaces.items():
            for cosine in (True, False) if name == "output" else (True,):
                overlap, jac = score(neighbours(vecs, cosine), gsets)
                row = {
                    "bundle": b.name,
                    "model": b.model,
                    "space": name,
                    "similarity": "cosine" if cosine else "dot",
                    "dim": int(vecs.shape[1]),
                    "overlap@10": overlap,
                    "jaccard@10": jac,
                    "mean_cos": mean_cos(vecs),
                }
                rows.append(row)
                print(json.dumps(row))
    rng = np.random.default_rng(0)
    n = len(gsets)
    rand = np.array([rng.choice(np.delete(np.arange(n), i), K, replace=False) for i in range(n)])
    overlap, jac = score(rand, gsets)
    rows.append(
        {
            "bundle": "-",
            "model": "-",
            "space": "random",
            "similarity": "-",
            "dim": 0,
            "overlap@10": overlap,
            "jaccard@10": jac,
            "mean_cos": None,
        }
    )
    print(json.dumps(rows[-1]))
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
        "bundles": {str(p): json.loads((p / "manifest.json").read_text()).get("metrics") for p in args.bundle},
        "machine": machine_info(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Similar items on ML-1M: genre overlap@10 ({result['date']})",
        "",
        f"Command: `{result['command']}`; CPU {result['machine']['cpu']}.",
        "",
        "| bundle | space | similarity | dim | overlap@10 | jaccard@10 | mean pairwise cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mc = "-" if r["mean_cos"] is None else f"{r['mean_cos']:.3f}"
        lines.append(
            f"| {r['bundle']} | {r['space']} | {r['similarity']} | {r['dim']} | {r['overlap@10']:.3f} | "
            f"{r['jaccard@10']:.3f} | {mc} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
