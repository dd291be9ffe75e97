"""Filtered top-k at a million items: the GET /recommend path with business rules.

    python -m benchmarks.serving.filtered_topk --bundle artifacts/<an exported bundle> --items 1000000 \\
        --out benchmarks/results/serving/filtered_topk.json

The catalogue: the bundle's item vectors resampled with noise (half their per-dimension spread, as
benchmarks/serving/ann_recall.py does) up to --items, the bundle's own items first so its encoder reads
real histories; served by the IVF index the service picks at that size. Every item gets a number
`bucket` (0..9999, uniform), so `bucket < 5000`, `bucket < 500` and `bucket < 10` keep 50%, 5% and
0.1% of the catalogue; the catalogue is loaded through the service's own Catalog (the in-process
store: the same table, views and masks a Redis-backed process holds).

Measured, in one run, on the same warm process:
- latency of `app.serving.recommend.recommend` (the pipeline GET /recommend runs: history read from
  the in-process store, ONNX user vector, rules, top-k) per filter and without one, p50 / p99, the
  settings interleaved round by round so that drift hits all alike; no user cache (every call
  encodes the history and searches);
- recall@10 of each filtered answer against the exact filtered top-10 (the user vector times every
  kept item's vector, seen items excluded);
- with --http, the same requests over HTTP against one uvicorn process of the app (sequential,
  one connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from benchmarks.machine import machine_info

FILTERS = {"none": None, "50%": "bucket < 5000", "5%": "bucket < 500", "0.1%": "bucket < 10"}


def grow_bundle(base: Path, n_items: int, out: Path, seed: int = 0) -> Path:
    """A copy of `base` whose catalogue holds `n_items` items: its own first, then resampled ones."""
    import hashlib

    from app.bundles.manifest import read_manifest

    manifest = read_manifest(base)
    real = np.load(base / "item_vectors.npy")
    ids = json.loads((base / "item_ids.json").read_text())
    pop = np.load(base / "popularity.npy")
    rng = np.random.default_rng(seed)
    extra = n_items - len(ids)
    pick = rng.integers(0, len(ids), size=extra)
    vecs = np.concatenate([real, real[pick] + rng.normal(0, real.std(axis=0), size=(extra, real.shape[1])) * 0.5])
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "item_vectors.npy", np.ascontiguousarray(vecs, np.float32))
    (out / "item_ids.json").write_text(json.dumps([*ids, *(f"s{n}" for n in range(extra))]))
    np.save(out / "popularity.npy", np.concatenate([pop, pop[pick] * rng.random(extra)]).astype(pop.dtype))
    shutil.copyfile(base / "model.onnx", out / "model.onnx")
    files = {}
    for f in ("model.onnx", "item_vectors.npy", "item_ids.json", "popularity.npy"):
        files[f] = hashlib.sha256((out / f).read_bytes()).hexdigest()
    grown = manifest.model_copy(
        update={
            "name": f"{manifest.name}-{n_items}",
            "num_items": n_items,
            "files": files,
            "clusters": None,
            "item_spaces": None,
            "ablation": None,
            "incremental": None,
        }
    )
    (out / "manifest.json").write_text(grown.to_json())
    return out


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


async def load_catalogue(catalog: Any, ids: list[str], buckets: np.ndarray) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(ids), 10_000):
        rows = [
            {"item_id": i, "bucket": int(b)} for i, b in zip(ids[s : s + 10_000], buckets[s : s + 10_000], strict=True)
        ]
        version, errors, _ = await catalog.put(rows)
        assert version and not errors, errors[:3]
    return time.perf_counter() - t0


async def in_process(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    from app.bundles.loader import load_bundle
    from app.bundles.registry import Registry
    from app.runtime.metrics import Metrics
    from app.serving.catalog import Catalog, Limits, Wanted
    from app.serving.recommend import Ask, recommend
    from app.settings import Settings
    from app.state import AppState
    from app.stores.base import Event
    from app.stores.catalog import MemoryCatalog
    from app.stores.memory import MemoryStore

    t0 = time.perf_counter()
    bundle = load_bundle(path)  # the service's choice of index at this size
    load_s = time.perf_counter() - t0
    settings = Settings(bundles=[path], online_tracking=False, user_cache=False)
    metrics = Metrics()
    catalog = Catalog(MemoryCatalog(), limits=Limits(settings.filter_overfetch_max, settings.filter_exact_max))
    store = MemoryStore(settings.max_history, settings.history_ttl_s)
    state = AppState(settings, Registry({bundle.name: bundle}, bundle.name), store, metrics, catalog=catalog)
    rng = np.random.default_rng(1)
    n = len(bundle.item_ids)
    buckets = rng.integers(0, 10_000, size=n)
    catalogue_s = await load_catalogue(catalog, bundle.item_ids, buckets)
    n_real = args.real_items
    users = [f"u{u}" for u in range(args.users)]
    events = []
    for u in users:  # histories of the bundle's own items (what its encoder knows)
        for t, item in enumerate(rng.integers(0, n_real, size=int(rng.integers(5, 60)))):
            events.append(Event(u, bundle.item_ids[int(item)], 1_700_000_000 + t, f"{u}-{t}"))
    await store.append(events)
    kept = {name: (float(np.mean(buckets < int(f.split("<")[1]))) if f else 1.0) for name, f in FILTERS.items()}

    asks = {name: [Ask(u, 10, wanted=Wanted(filter=f)) for u in users] for name, f in FILTERS.items()}
    for name in FILTERS:  # warm: masks cached, first calls paid
        for ask in asks[name][:20]:
            await recommend(state, ask)
    latency: dict[str, list[float]] = {name: [] for name in FILTERS}
    answers: dict[str, dict[str, list[str]]] = {name: {} for name in FILTERS}
    short = dict.fromkeys(FILTERS, 0)  # answers with fewer than k items (every filter keeps >= 1000)
    order = list(FILTERS)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            for ask in asks[name]:
                t = time.perf_counter()
                got = await recommend(state, ask)
                latency[name].append(time.perf_counter() - t)
                answers[name][ask.user_id] = got.ids  # type: ignore[index]
                short[name] += len(got.ids) < ask.k

    # recall@10 of the answers against the exact filtered top-10
    table = bundle.vectors(np.arange(1, n + 1))  # (N, D)
    recall: dict[str, float] = {}
    for name, f in FILTERS.items():
        rules = catalog.rules(bundle, Wanted(filter=f))
        mask = np.ones(n + 1, bool) if rules.mask is None else rules.mask.copy()
        hits = total = 0
        for u in users[: args.recall_users]:
            hist, _ = await store.history_times(u)
            seen = bundle.encode(hist)
            vec = bundle.user_vectors([seen])[0]
            scores = table @ vec
            ok = mask[1:].copy()
            ok[seen - 1] = False
            scores[~ok] = -np.inf
            top = np.argpartition(-scores, 10)[:10]
            exact = set(bundle.external(top + 1))
            hits += len(exact & set(answers[name][u]))
            total += len(exact)
        recall[name] = round(hits / total, 4)
    return {
        "bundle_load_s": round(load_s, 1),
        "index": type(bundle.index).__name__,
        "catalogue_load_s": round(catalogue_s, 1),
        "kept_fraction": kept,
        "pipeline": {
            name: {
                **percentiles(latency[name]),
                "calls": len(latency[name]),
                "recall_at_10": recall[name],
                "answers_short_of_k": short[name],
            }
            for name in FILTERS
        },
        "p50_vs_no_filter": {
            name: round(float(np.percentile(latency[name], 50) / np.percentile(latency["none"], 50)), 2)
            for name in FILTERS
        },
        "recall_at_least_0_98": all(r >= 0.98 for r in recall.values()),
        "always_k": not any(short.values()),
    }


def over_http(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """One uvicorn process of the app: catalogue posted in batches, then sequential GET /recommend."""
    import httpx

    from tests.support.procs import ApiProc

    work = Path(tempfile.mkdtemp(prefix="filtered-http-"))
    api = ApiProc([path], None, work, SEQREC_USER_CACHE="false", SEQREC_ONLINE_TRACKING="false")
    api.start(timeout=600)
    try:
        rng = np.random.default_rng(1)
        ids = json.loads((path / "item_ids.json").read_text())
        buckets = rng.integers(0, 10_000, size=len(ids))
        key = {"X-API-Key": api.env["SEQREC_API_KEY"]}
        with httpx.Client(base_url=api.base, timeout=120) as c:
            for s in range(0, len(ids), 1000):
                rows = [
                    {"item_id": i, "bucket": int(b)}
                    for i, b in zip(ids[s : s + 1000], buckets[s : s + 1000], strict=True)
                ]
                assert c.post("/catalog/items", json={"items": rows}, headers=key).status_code == 200
            users = [f"u{u}" for u in range(args.users)]
            events = []
            for u in users:
                for t, item in enumerate(rng.integers(0, args.real_items, size=int(rng.integers(5, 60)))):
                    events.append({"user_id": u, "item_id": ids[int(item)], "timestamp": 1_700_000_000 + t})
            for s in range(0, len(events), 1000):
                assert c.post("/events", json={"events": events[s : s + 1000]}, headers=key).status_code == 200
            latency: dict[str, list[float]] = {name: [] for name in FILTERS}
            for f in FILTERS.values():  # warm
                for u in users[:20]:
                    c.get(f"/recommend/{u}", params={"k": 10, **({"filter": f} if f else {})})
            order = list(FILTERS)
            for r in range(args.rounds):
                for name in order if r % 2 == 0 else order[::-1]:
                    params = {"k": 10, **({"filter": FILTERS[name]} if FILTERS[name] else {})}
                    for u in users:
                        t = time.perf_counter()
                        resp = c.get(f"/recommend/{u}", params=params)
                        latency[name].append(time.perf_counter() - t)
                        assert resp.status_code == 200 and len(resp.json()["items"]) == 10
        return {name: {**percentiles(v), "calls": len(v)} for name, v in latency.items()}
    finally:
        api.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="An exported bundle: its encoder and item vectors.")
    ap.add_argument("--items", type=int, default=1_000_000, help="Catalogue size (the bundle's items, then resampled).")
    ap.add_argument("--users", type=int, default=200, help="Users with a stored history (requests per round).")
    ap.add_argument("--rounds", type=int, default=6, help="Rounds; each runs every user once per setting.")
    ap.add_argument("--recall-users", type=int, default=200, help="Users whose answers are checked against exact.")
    ap.add_argument("--http", action="store_true", help="Also measure over HTTP (one uvicorn process).")
    ap.add_argument("--out", type=Path, help="Write the results here (JSON).")
    args = ap.parse_args()
    args.real_items = len(json.loads((args.bundle / "item_ids.json").read_text()))
    work = Path(tempfile.mkdtemp(prefix="filtered-topk-"))
    try:
        path = grow_bundle(args.bundle, args.items, work / "bundle")
        result: dict[str, Any] = {
            "benchmark": "filtered_topk",
            "date": time.strftime("%Y-%m-%d"),
            "command": "python " + " ".join(sys.argv),
            "machine": machine_info(),
            "cpu_affinity": sorted(os.sched_getaffinity(0)),  # [1] under taskset -c 1
            "catalogue": f"{args.items} items: the {args.bundle.name} item vectors ({args.real_items}) resampled "
            "with noise; `bucket` uniform in 0..9999",
            "filters": FILTERS,
            "k": 10,
            "users": args.users,
            "rounds": args.rounds,
        }
        result |= asyncio.run(in_process(args, path))
        if args.http:
            result["http"] = over_http(args, path)
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
