"""What explain=true adds to one recommendation, with and without the bundle's ablation graph.

    flock /tmp/seqrec-core0.lock taskset -c 0 python benchmarks/explain_latency.py \
        --bundle artifacts/sasrec-ml1m --out benchmarks/results/explain_latency.json

Real ML-1M histories (the newest `--history` events of each user, as the service reads them
with SEQREC_MAX_HISTORY), one user at a time, one thread. Two measurements, both comparing the
two ways of computing the N ablations on the same users in the same run:

- in process: the plain path (user vector + top-10), then explain() on its answer through the
  bundle's ablation.onnx ("graph") and through N + 1 histories in one model.onnx batch
  ("batched"), alternating per user; p50/p90 and the largest difference between the two
  methods' contributions (they must agree: same numbers within 1e-5);
- over HTTP (`--http`): the server `make bench-serve` runs (`seqrec serve`, Redis, the
  service's default SEQREC_MAX_HISTORY=200, one worker), serving the bundle and a copy of it
  without its ablation section; the users' histories are posted with POST /events, then
  GET /recommend/{user}?k=10 with and without explain=true for each bundle, one request at a
  time; extra = p50(explain) - p50(plain).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.bundle import Bundle  # noqa: E402
from app.explain import contributions, explain  # noqa: E402
from app.loader import load_bundle  # noqa: E402
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


def in_process(bundle: Bundle, users: list[np.ndarray], caps: list[int], ns: list[int], k: int) -> list[dict]:
    graph = bundle.ablation
    rows = []
    for cap in caps:
        hists = [h[-cap:] for h in users]
        for n in ns:
            base: list[float] = []
            t_graph: list[float] = []
            t_batch: list[float] = []
            worst = 0.0
            for h in hists:
                t0 = time.perf_counter()
                labels, _ = bundle.index.search(bundle.user_vectors([h]), k, [h])
                t1 = time.perf_counter()
                base.append(t1 - t0)
                bundle.ablation = None
                t2 = time.perf_counter()
                explain(bundle, h, labels[0], n)
                t3 = time.perf_counter()
                t_batch.append(t3 - t2)
                batched = contributions(bundle, h, labels[0], n)
                bundle.ablation = graph
                if graph is not None:
                    t4 = time.perf_counter()
                    explain(bundle, h, labels[0], n)
                    t5 = time.perf_counter()
                    t_graph.append(t5 - t4)
                    worst = max(worst, float(np.abs(contributions(bundle, h, labels[0], n) - batched).max()))
            row = {
                "history_events": cap,
                "median_history": float(np.median([len(h) for h in hists])),
                "explain_n": n,
                "recommend_p50_ms": pct(base, 50),
                "batched_extra_p50_ms": pct(t_batch, 50),
                "batched_extra_p90_ms": pct(t_batch, 90),
            }
            if graph is not None:
                row |= {
                    "graph_extra_p50_ms": pct(t_graph, 50),
                    "graph_extra_p90_ms": pct(t_graph, 90),
                    "speedup_p50": round(pct(t_batch, 50) / pct(t_graph, 50), 2),
                    "max_abs_contribution_diff": worst,
                }
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
    from benchmarks.serve_load import Conn

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


def http(bundle_path: Path, histories: dict[str, list[str]], n: int, k: int, rounds: int) -> dict:
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
    ap.add_argument("--http", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--http-users", type=int, default=200)
    ap.add_argument("--http-rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    rng = np.random.default_rng(0)
    by_user = {u: h for u, h in ml1m_histories(args.data_dir, bundle).items() if len(h) >= 2}
    names = list(by_user)
    pick = [names[i] for i in rng.choice(len(names), size=min(args.users, len(names)), replace=False)]
    rows = in_process(bundle, [by_user[u] for u in pick], args.history, args.n, args.k)
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
        "machine": machine_info(),
        "rows": rows,
    }
    if args.http:
        if bundle.ablation is None:
            sys.exit("--http compares the ablation graph with batching: the bundle has no ablation.onnx")
        users = {f"ml1m-{u}": bundle.external(by_user[u][-200:]) for u in pick[: args.http_users]}
        result["http"] = http(args.bundle, users, max(args.n), args.k, args.http_rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
