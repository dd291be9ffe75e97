"""Choose the approximate top-k library by measurement: recall@10 against exact inner-product
search, query latency (one query at a time, one thread: how the service calls it), build time.

    python -m benchmarks.serving.ann_recall --bundle artifacts/sasrec-ml1m --out benchmarks/results/serving/ann.json
    python -m benchmarks.serving.ann_recall --bundle ... --million 1000000 --out benchmarks/results/serving/ann_1m.json

Tables: the bundle's real item vectors (queries: real user vectors from random histories
through the bundle's ONNX model), plus a Beauty-sized synthetic table (54,542 items) built by
perturbing the real vectors, so its geometry (norms, clusters) stays realistic.
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

from benchmarks.machine import machine_info


def exact_topk(table: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ table.T
    part = np.argpartition(-s, k, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(s, part, 1), axis=1), 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def bench_lib(name: str, table: np.ndarray, queries: np.ndarray, k: int, m: int, ef_c: int, ef: int):
    n, d = table.shape
    t0 = time.perf_counter()
    if name == "hnswlib":
        import hnswlib

        idx = hnswlib.Index(space="ip", dim=d)
        idx.init_index(max_elements=n, M=m, ef_construction=ef_c)
        idx.set_num_threads(1)
        idx.add_items(table, np.arange(n))
        idx.set_ef(ef)

        def search(q):
            return idx.knn_query(q, k=k)[0]
    elif name == "faiss-hnsw":
        import faiss

        faiss.omp_set_num_threads(1)
        idx = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = ef_c
        idx.add(table)
        idx.hnsw.efSearch = ef

        def search(q):
            return idx.search(q, k)[1]
    elif name == "usearch":
        from usearch.index import Index

        idx = Index(ndim=d, metric="ip", dtype="f32", connectivity=m, expansion_add=ef_c, expansion_search=ef)
        idx.add(np.arange(n), table, threads=1)

        def search(q):
            return idx.search(q, k, threads=1).keys
    elif name == "voyager":
        import voyager

        idx = voyager.Index(voyager.Space.InnerProduct, num_dimensions=d, M=m, ef_construction=ef_c)
        idx.add_items(table, np.arange(n), num_threads=1)

        def search(q):
            return idx.query(q, k=k, num_threads=1, query_ef=ef)[0]
    else:
        raise ValueError(name)
    build = time.perf_counter() - t0
    truth = exact_topk(table, queries, k)
    found = np.stack([np.asarray(search(q[None, :])).reshape(-1)[:k] for q in queries])
    lat = []
    for q in queries:
        t = time.perf_counter()
        search(q[None, :])
        lat.append(time.perf_counter() - t)
    return {
        "library": name,
        "M": m,
        "ef_construction": ef_c,
        "ef_search": ef,
        "recall@10": round(recall(found, truth), 4),
        "p50_us": round(float(np.percentile(lat, 50)) * 1e6, 1),
        "p99_us": round(float(np.percentile(lat, 99)) * 1e6, 1),
        "build_s": round(build, 2),
    }


def bench_exact(table: np.ndarray, queries: np.ndarray, k: int) -> dict:
    lat = []
    for q in queries:
        t = time.perf_counter()
        exact_topk(table, q[None, :], k)
        lat.append(time.perf_counter() - t)
    return {
        "library": "exact (numpy BLAS)",
        "recall@10": 1.0,
        "p50_us": round(float(np.percentile(lat, 50)) * 1e6, 1),
        "p99_us": round(float(np.percentile(lat, 99)) * 1e6, 1),
        "build_s": 0.0,
    }


def bench_service(table: np.ndarray, queries: np.ndarray, k: int, n_exclude: int) -> list[dict]:
    """The service's own indexes (app/bundles/index.py) as the service calls them: one query, `n_exclude`
    seen items filtered out; recall against exact search with the same exclusion."""
    from app.bundles.index import ExactIndex, HNSWIndex

    n = len(table)
    labels = np.arange(1, n + 1)
    rng = np.random.default_rng(3)
    excl = [rng.choice(labels, size=n_exclude, replace=False) for _ in range(len(queries))]
    exact = ExactIndex(labels, table)
    truth = [exact.search(q[None, :], k, [e])[0][0] for q, e in zip(queries, excl, strict=True)]
    out = []
    t0 = time.perf_counter()
    hnsw = HNSWIndex(labels, table)
    build = time.perf_counter() - t0
    for name, idx, b in (("app ExactIndex", exact, 0.0), ("app HNSWIndex (faiss, M=16, ef=128)", hnsw, build)):
        lat, found = [], []
        for q, e in zip(queries, excl, strict=True):
            t = time.perf_counter()
            got = idx.search(q[None, :], k, [e])[0][0]
            lat.append(time.perf_counter() - t)
            found.append(got)
        leaked = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, excl, strict=True))
        out.append(
            {
                "library": f"{name}, {n_exclude} excluded",
                "recall@10": round(recall(np.stack(found), np.stack(truth)), 4),
                "p50_us": round(float(np.percentile(lat, 50)) * 1e6, 1),
                "p99_us": round(float(np.percentile(lat, 99)) * 1e6, 1),
                "build_s": round(b, 2),
                "excluded_items_returned": leaked,
            }
        )
    return out


def queries_and_tables(bundle_path: Path, n_queries: int, n_synthetic: int):
    """(bundle, real user vectors from random histories, the real item table, a synthetic table of
    `n_synthetic` items, the rng): the synthetic table resamples the real vectors with noise of half
    their per-dimension spread, so its geometry (norms, clusters) stays realistic."""
    from app.bundles.loader import load_bundle

    bundle = load_bundle(bundle_path, ann_threshold=10**9)
    rng = np.random.default_rng(0)
    n = len(bundle.item_ids)
    hists = [rng.integers(1, n + 1, size=int(rng.integers(5, bundle.max_len))) for _ in range(n_queries)]
    queries = np.concatenate([bundle.user_vectors(hists[i : i + 64]) for i in range(0, len(hists), 64)])
    real = np.load(bundle_path / "item_vectors.npy")
    base = real[rng.integers(0, n, size=n_synthetic)]
    synthetic = base + rng.normal(0, real.std(axis=0), size=base.shape) * 0.5
    f32 = np.float32
    return bundle, np.ascontiguousarray(queries, f32), real, np.ascontiguousarray(synthetic, f32), rng


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--big-items", type=int, default=54_542)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serving/ann.json"))
    ap.add_argument("--libs", nargs="*", default=["faiss-hnsw", "hnswlib", "usearch", "voyager"])
    ap.add_argument(
        "--million",
        type=int,
        default=0,
        help="only the service's indexes on a synthetic table of this many items (e.g. 1000000): exact vs IVF and HNSW",
    )
    args = ap.parse_args()
    if args.million:
        million(args)
        return

    bundle, queries, real, big, _ = queries_and_tables(args.bundle, args.queries, args.big_items)
    n = len(real)
    tables = {f"{bundle.name} ({n} items, real)": real, f"beauty-sized ({args.big_items} items, synthetic)": big}

    results = []
    configs = [(16, 200, 64), (16, 200, 128), (32, 200, 128)]
    for tname, table in tables.items():
        table = np.ascontiguousarray(table, dtype=np.float32)
        row = {"table": tname, "dim": int(table.shape[1]), "k": 10, "runs": [bench_exact(table, queries, 10)]}
        row["runs"] += bench_service(table, queries, 10, 200)
        print(tname, row["runs"][-2:], flush=True)
        for lib in args.libs:
            for m, ef_c, ef in configs:
                r = bench_lib(lib, table, queries, 10, m, ef_c, ef)
                print(tname, r, flush=True)
                row["runs"].append(r)
        results.append(row)
    out = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_info(),
        "queries": args.queries,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    md = [f"# ANN choice\n\nCommand: `{out['command']}`\n\nMachine: {out['machine']}\n"]
    for row in results:
        md.append(f"\n## {row['table']}, dim {row['dim']}, k=10, {args.queries} queries, 1 thread\n")
        md.append(
            "| library | M | ef_c | ef_search | recall@10 | p50 µs | p99 µs | build s |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        for r in row["runs"]:
            md.append(
                f"| {r['library']} | {r.get('M', '')} | {r.get('ef_construction', '')} | {r.get('ef_search', '')} "
                f"| {r['recall@10']} | {r['p50_us']} | {r['p99_us']} | {r['build_s']} |"
            )
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")


def million(args: argparse.Namespace) -> None:
    """The service's ExactIndex vs its IVFIndex and HNSWIndex (each built once, search breadth varied)."""
    from app.bundles.index import ExactIndex, HNSWIndex, IVFIndex

    bundle, queries, _, table, rng = queries_and_tables(args.bundle, args.queries, args.million)
    labels = np.arange(1, args.million + 1)
    excl = [rng.choice(labels, size=200, replace=False) for _ in range(len(queries))]
    exact = ExactIndex(labels, table)

    def timed(idx) -> tuple[list[np.ndarray], float, float]:
        lat, found = [], []
        for q, e in zip(queries, excl, strict=True):
            t = time.perf_counter()
            found.append(idx.search(q[None, :], 10, [e])[0][0])
            lat.append(time.perf_counter() - t)
        return found, float(np.percentile(lat, 50)) * 1e6, float(np.percentile(lat, 99)) * 1e6

    truth, ex_p50, ex_p99 = timed(exact)
    runs = [
        {
            "index": "app ExactIndex (numpy BLAS), 200 excluded",
            "recall@10": 1.0,
            "p50_us": round(ex_p50, 1),
            "p99_us": round(ex_p99, 1),
            "speedup_p50": 1.0,
            "build_s": 0.0,
        }
    ]
    print(runs[-1], flush=True)

    def measure(name: str, idx, build: float) -> None:
        found, p50, p99 = timed(idx)
        leaked = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, excl, strict=True))
        runs.append(
            {
                "index": name,
                "recall@10": round(recall(np.stack(found), np.stack(truth)), 4),
                "p50_us": round(p50, 1),
                "p99_us": round(p99, 1),
                "speedup_p50": round(ex_p50 / p50, 1),
                "build_s": round(build, 1),
                "excluded_items_returned": leaked,
            }
        )
        print(runs[-1], flush=True)

    t0 = time.perf_counter()
    ivf = IVFIndex(labels, table)  # what the service builds at this size
    build = time.perf_counter() - t0
    default = ivf.nprobe
    for nprobe in (16, 32, 64, default):
        ivf.nprobe = nprobe
        tag = " (service default)" if nprobe == default else ""
        measure(f"app IVFIndex (faiss IVF-Flat, nlist={ivf.nlist}, nprobe={nprobe}){tag}, 200 excluded", ivf, build)
    del ivf
    t0 = time.perf_counter()
    hnsw = HNSWIndex(labels, table)  # the service's HNSW settings: M=16, ef_construction=200, one thread
    build = time.perf_counter() - t0
    for ef in (64, 128, 256, 512):
        hnsw.ef_search = ef
        measure(f"app HNSWIndex (faiss, M=16, ef_construction=200, ef_search={ef}), 200 excluded", hnsw, build)
    out = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_info(),
        "table": f"{args.million} items, dim {table.shape[1]}: the {bundle.name} item vectors resampled with noise "
        "(half their per-dimension spread), so norms and clusters stay realistic",
        "queries": f"{args.queries} real user vectors (random histories through the bundle's ONNX model), k=10, "
        "200 random items excluded per query as in a real request, one thread",
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    md = [
        f"# Approximate top-k at {args.million:,} items\n",
        f"Command: `{out['command']}`\n",
        f"Machine: {out['machine']}\n",
        f"Table: {out['table']}. Queries: {out['queries']}.\n",
        "| index | recall@10 | p50 µs | p99 µs | speed-up vs exact (p50) | build s |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['index']} | {r['recall@10']} | {r['p50_us']} | {r['p99_us']} | {r['speedup_p50']}x | {r['build_s']} |"
        for r in runs
    ]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
