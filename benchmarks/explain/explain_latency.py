"""What explain=true adds to one recommendation, with and without the bundle's ablation graph.

    flock /tmp/seqrec-core0.lock flock /tmp/seqrec-core1.lock python -m benchmarks.explain.explain_latency \
        --bundle artifacts/sasrec-ml1m --out benchmarks/results/explain/explain_latency.json

Real ML-1M histories (the newest `--history` events of each user, as the service reads them
with SEQREC_MAX_HISTORY), one user at a time. The explanation call runs with each `--threads`
value (SEQREC_EXPLAIN_THREADS; both cores must be free for 2, else `--threads 1` pinned to one
core), the plain path with one thread.
Two measurements, both comparing the two ways of computing the N ablations (and the thread
counts) on the same users in the same run:

- in process: the plain path (user vector + top-10), then explain() on its answer (given that
  user vector, as the route passes it) through the bundle's ablation.onnx ("graph") and through
  N + 1 histories in one model.onnx batch ("batched"), alternating per user; p50/p90 and the
  largest difference between the two methods' and thread counts' contributions (they must
  agree: same numbers within 1e-5);
  "service" = the method the bundle's cost rule picks per history;
- over HTTP (`--http`): the server `make bench-serve` runs (`seqrec serve`, Redis, the
  service's default SEQREC_MAX_HISTORY=200, one worker, once per thread count), serving the bundle and a copy of it
  without its ablation section; the users' histories are posted with POST /events, then
  GET /recommend/{user}?k=10 with and without explain=true for each bundle, one request at a
  time; extra = p50(explain) - p50(plain).

`--crossover` measures instead where the graph starts to beat the batch, the numbers behind
`AblationGraph.cheaper`: the median time of the one encoder call of each method for windows of
`--crossover-lengths` random events and each `--n`, alternating, one thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from app.bundles.bundle import Bundle  # noqa: E402
from app.bundles.loader import load_bundle  # noqa: E402
from app.serving.explain import ablation_batch, contributions, explain  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402


def ml1m_histories(data_dir: Path, bundle: Bundle) -> dict[str, np.ndarray]:
    """Every user's ML-1M sequence (ml-1m.sasrec.txt: `user item` lines in time order) as model indices."""
    seqs: dict[str, list[str]] = {}
    with (data_dir / "ml-1m" / "ml-1m.sasrec.txt").open() as fh:
        for line in fh:
            u, i = line.split()
            seqs.setdefault(u, []).append(i)
    return {u: bundle.encode(s) for u, s in seqs.items()}


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 3)


def in_process(
    bundle: Bundle, users: list[np.ndarray], caps: list[int], ns: list[int], k: int, threads: list[int]
) -> list[dict]:
    graph = bundle.ablation
    methods = ["batched"] + (["graph"] if graph is not None else [])
    rule = graph.cheaper if graph is not None else None

    def use(method: str) -> None:  # "graph" for every history (not only where the cost rule picks it)
        bundle.ablation = graph if method == "graph" else None
        if graph is not None:
            graph.cheaper = (lambda *_: True) if method == "graph" else rule  # type: ignore[method-assign]

    for t in threads:  # open each thread count's sessions before timing (the service opens them on first use)
        for m in methods:
            use(m)
            explain(bundle, users[0], np.arange(1, k + 1), max(ns), threads=t)
    rows = []
    for cap in caps:
        hists = [h[-cap:] for h in users]
        for n in ns:
            base: list[float] = []
            lat: dict[tuple[str, int], list[float]] = {(m, t): [] for m in methods for t in threads}
            worst_method = 0.0
            worst_threads = 0.0
            for h in hists:
                t0 = time.perf_counter()
                user = bundle.user_vectors([h])  # (1, D), passed on to explain() as the service does
                labels, _ = bundle.index.search(user, k, [h])
                t1 = time.perf_counter()
                base.append(t1 - t0)
                ref = None
                for t in threads:  # alternating per user: both methods and thread counts see the same load
                    for m in methods:
                        use(m)
                        t2 = time.perf_counter()
                        explain(bundle, h, labels[0], n, threads=t, user=user[0])
                        t3 = time.perf_counter()
                        lat[(m, t)].append(t3 - t2)
                        got = contributions(bundle, h, labels[0], n, threads=t, user=user[0])
                        one = got if t == 1 else contributions(bundle, h, labels[0], n, threads=1, user=user[0])
                        worst_threads = max(worst_threads, float(np.abs(got - one).max()))
                        if ref is None:
                            ref = got
                        worst_method = max(worst_method, float(np.abs(got - ref).max()))
                use("graph")
                if graph is not None:
                    graph.cheaper = rule  # type: ignore[method-assign]
            row: dict = {
                "history_events": cap,
                "median_history": float(np.median([len(h) for h in hists])),
                "explain_n": n,
                "recommend_p50_ms": pct(base, 50),
            }
            for t in threads:
                for m in methods:
                    row[f"{m}_t{t}_extra_p50_ms"] = pct(lat[(m, t)], 50)
                    row[f"{m}_t{t}_extra_p90_ms"] = pct(lat[(m, t)], 90)
                # What the service does: the bundle's cost rule picks the method per history.
                auto = lat[("graph", t)] if graph is not None else lat[("batched", t)]
                if graph is not None:
                    auto = [
                        g
                        if graph.cheaper(
                            len(h[-(bundle.max_len + 1) :]), min(n, len(h), bundle.max_len), bundle.max_len
                        )
                        else b
                        for g, b, h in zip(lat[("graph", t)], lat[("batched", t)], hists, strict=True)
                    ]
                row[f"service_t{t}_extra_p50_ms"] = pct(auto, 50)
            row["max_abs_contribution_diff_methods"] = worst_method
            row["max_abs_contribution_diff_threads_vs_1"] = worst_threads
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def crossover(bundle: Bundle, lengths: list[int], ns: list[int], reps: int = 60) -> list[dict]:
    """Median ms of graph.run and of the batch's padded_vectors per (window length, n), alternating."""
    graph = bundle.ablation
    assert graph is not None, "--crossover compares the ablation graph with batching"
    rng = np.random.default_rng(0)
    rows = []
    for n in ns:
        for length in lengths:
            a = min(n, length, bundle.max_len)
            if a < 2:
                continue
            window = rng.integers(1, len(bundle.item_ids) + 1, size=min(length, bundle.max_len + 1)).astype(np.int64)
            t_graph: list[float] = []
            t_batch: list[float] = []
            for r in range(reps + 5):  # 5 warm-up calls each
                t0 = time.perf_counter()
                graph.run(window, a)
                t1 = time.perf_counter()
                bundle.padded_vectors(ablation_batch(window, a, bundle.max_len, bundle.padding_index))
                t2 = time.perf_counter()
                if r >= 5:
                    t_graph.append(t1 - t0)
                    t_batch.append(t2 - t1)
            row = {"window": len(window), "n": a, "graph_p50_ms": pct(t_graph, 50), "batch_p50_ms": pct(t_batch, 50)}
            row["rule_picks_graph"] = graph.cheaper(len(window), a, bundle.max_len)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def without_ablation(src: Path, dst: Path) -> Path:
    """A copy of the bundle that explains by batching model.onnx (its manifest lacks `ablation`)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    meta = manifest.pop("ablation")
    del manifest["files"][meta["file"]]
    (dst / meta["file"]).unlink()
    manifest["name"] = dst.name
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


async def http_phase(port: int, api_key: str, histories: dict[str, list[str]], names: list[str], k: int, rounds: int):
    from benchmarks.serving.serve_load import Conn

    c = await Conn.open(port)
    events = [
        {"user_id": u, "item_id": item, "timestamp": 1_700_000_000 + t, "event_id": f"{u}-{t}"}
        for u, items in histories.items()
        for t, item in enumerate(items)
    ]
    for i in range(0, len(events), 500):
        batch = json.dumps({"events": events[i : i + 500]}).encode()
        status, body = await c.request("POST", "/events", batch, f"X-API-Key: {api_key}\r\n")
        assert status == 200, body
    lat: dict[str, list[float]] = {f"{n}:{e}": [] for n in names for e in ("plain", "explain")}
    worst = 0.0
    users = list(histories)
    for r in range(rounds + 1):  # round 0 warms up
        for u in users:
            got = {}
            for name in names:
                for mode, query in (("plain", ""), ("explain", "&explain=true")):
                    t0 = time.perf_counter()
                    status, body = await c.request("GET", f"/recommend/{u}?k={k}&model={name}{query}")
                    dt = time.perf_counter() - t0
                    assert status == 200, body
                    if r:
                        lat[f"{name}:{mode}"].append(dt)
                    if mode == "explain":
                        got[name] = json.loads(body)["items"]
            a, b = (got[n] for n in names)
            assert [x["item_id"] for x in a] == [x["item_id"] for x in b]
            for x, y in zip(a, b, strict=True):  # the same events, matched by age, the same contributions
                theirs = {e["age"]: e["contribution"] for e in y["because"]}
                for e in x["because"]:
                    if e["age"] in theirs:
                        worst = max(worst, abs(e["contribution"] - theirs[e["age"]]))
    c.close()
    out = {}
    for name in names:
        plain, expl = lat[f"{name}:plain"], lat[f"{name}:explain"]
        out[name] = {
            "requests_each": len(plain),
            "plain_p50_ms": pct(plain, 50),
            "explain_p50_ms": pct(expl, 50),
            "explain_p90_ms": pct(expl, 90),
            "explain_extra_p50_ms": round(pct(expl, 50) - pct(plain, 50), 3),
        }
    out["max_abs_contribution_diff"] = worst
    return out


def http(bundle_path: Path, histories: dict[str, list[str]], n: int, k: int, rounds: int, threads: int) -> dict:
    from tests.support.procs import ApiProc, RedisProc, free_port, stop_process, wait_for

    tmp = Path(tempfile.mkdtemp(prefix="explain-bench-"))
    batched = without_ablation(bundle_path, tmp / f"{load_bundle(bundle_path).name}-batched")
    graph_name = json.loads((bundle_path / "manifest.json").read_text())["name"]
    procs: list[subprocess.Popen] = []
    try:
        redis = RedisProc().start()
        assert redis.proc is not None
        procs.append(redis.proc)
        port, api_key = free_port(), "bench-key"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SEQREC_KEY_PREFIX": "explain-bench:",
            "SEQREC_MAX_HISTORY": "200",
            "SEQREC_EXPLAIN_N": str(n),
            "SEQREC_EXPLAIN_THREADS": str(threads),
        }
        cmd = [sys.executable, "-m", "training.cli", "serve", "--bundle", str(bundle_path), "--bundle", str(batched)]
        cmd += ["--port", str(port), "--workers", "1", "--redis-url", redis.url, "--api-key", api_key]
        server = ApiProc.custom(cmd, env, tmp / "server.log", port).spawn()
        assert server.proc is not None
        procs.append(server.proc)
        wait_for(server.ready, 120, "seqrec serve", interval=0.2)
        out = asyncio.run(http_phase(port, api_key, histories, [graph_name, batched.name], k, rounds))
    finally:
        for p in reversed(procs):
            stop_process(p, timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)
    out["server"] = "seqrec serve --workers 1, Redis, SEQREC_MAX_HISTORY=200"
    out["explain_n"] = n
    out["explain_threads"] = threads
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "../shared/data")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--history", type=int, nargs="+", default=[50, 200], help="events the service reads per user")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="SEQREC_EXPLAIN_THREADS values compared")
    ap.add_argument("--http", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--http-users", type=int, default=200)
    ap.add_argument("--http-rounds", type=int, default=2)
    ap.add_argument("--crossover", action="store_true", help="time graph against batch per window length and N")
    ap.add_argument("--crossover-lengths", type=int, nargs="+", default=[10, 20, 30, 40, 50, 60, 80, 100, 150, 201])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    if args.crossover:
        rows = crossover(bundle, args.crossover_lengths, args.n)
        result = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "command": " ".join(["python", *sys.argv]),
            "bundle": {"name": bundle.name, "model": bundle.model, "max_len": bundle.max_len, "dim": bundle.dim},
            "machine": machine_info(),
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    rng = np.random.default_rng(0)
    by_user = {u: h for u, h in ml1m_histories(args.data_dir, bundle).items() if len(h) >= 2}
    names = list(by_user)
    pick = [names[i] for i in rng.choice(len(names), size=min(args.users, len(names)), replace=False)]
    rows = in_process(bundle, [by_user[u] for u in pick], args.history, args.n, args.k, args.threads)
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
        "bundle": {
            "name": bundle.name,
            "model": bundle.model,
            "max_len": bundle.max_len,
            "dim": bundle.dim,
            "ablation_graph": bundle.ablation is not None,
        },
        "users": len(pick),
        "k": args.k,
        "explain_threads": args.threads,
        "machine": machine_info(),
        "rows": rows,
    }
    if args.http:
        if bundle.ablation is None:
            sys.exit("--http compares the ablation graph with batching: the bundle has no ablation.onnx")
        users = {f"ml1m-{u}": bundle.external(by_user[u][-200:]) for u in pick[: args.http_users]}
        result["http"] = [http(args.bundle, users, max(args.n), args.k, args.http_rounds, t) for t in args.threads]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
