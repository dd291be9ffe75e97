"""The docker-compose topology with local processes (no Docker engine needed), and a drive through it.

    python scripts/local_topology.py                                   # ML-1M, quick training
    python scripts/local_topology.py --dataset ml-100k --train-args "--epochs 1 --max-users 300"
    python scripts/local_topology.py --cluster ...                     # the compose profile `cluster`
    python scripts/local_topology.py --bundle DIR --no-retrain         # serve an exported bundle, no job

1.-3. the processes of tests/support/topology.py (shared with benchmarks/serving/mixed_load.py): redis-server
   with the compose config, the training job (docker/train-job.sh), two API processes started
   by the serving image's entrypoint, sharing that Redis and the bundle directory;
4. the drive: both ready on the same bundle; events written through one API are seen by the
   other; the training job runs again and both APIs switch to the new bundle without a
   restart (same PIDs); optionally the mixed load benchmark (--bench SECONDS);
5. with --live, the live loop: real traffic (the dataset's own timed events of `--live-users`
   users) through the APIs, each recommendation scored by the user's next event; the job then
   snapshots Redis, warm-starts from the served bundle, publishes the result as the treatment
   of an experiment on both APIs; the split answers with both variants and GET /stats/online
   shows per-variant online metrics.
With --cluster, step 1 is the compose profile `cluster` instead: a Redis Cluster of 3 masters and
3 replicas (tests/support/cluster.py, each node on docker/redis-cluster.conf) and the APIs take its
redis+cluster:// URL.
Everything binds to 127.0.0.1 and is stopped at the end (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.serving.mixed_load import run_and_report  # noqa: E402
from tests.support.cluster import ClusterProcs  # noqa: E402
from tests.support.procs import RedisNotInstalled  # noqa: E402
from tests.support.topology import DOCKER, Topology  # noqa: E402


def http_json(method: str, url: str, body: object | None = None, headers: dict[str, str] | None = None) -> tuple:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def check(cond: bool, what: str, results: dict) -> None:
    results["checks"].append({"check": what, "ok": bool(cond)})
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        raise SystemExit(f"check failed: {what}")


def drive(topo: Topology, dataset: str, train_args: str, retrain: bool, results: dict) -> None:
    a, b = topo.bases()
    key = {"X-API-Key": topo.api_key}
    versions = {base: http_json("GET", f"{base}/readyz")[1]["bundles"][0]["version"] for base in (a, b)}
    check(len(set(versions.values())) == 1, "both APIs serve the same bundle", results)
    bundle = (topo.bundle_root / "sasrec").resolve()
    items = json.loads((bundle / "item_ids.json").read_text())[:8]

    events = [{"user_id": "topo-user", "item_id": it, "timestamp": 1_700_000_000 + n} for n, it in enumerate(items)]
    status, body = http_json("POST", f"{a}/events", {"events": events}, key)
    check(status == 200 and body["accepted"] == len(items), "events accepted by API 1", results)
    status, _ = http_json("POST", f"{b}/events", {"events": events[:1]})
    check(status == 401, "writes without the key from api.env are refused (401)", results)
    _, ra = http_json("GET", f"{a}/recommend/topo-user?k=10")
    _, rb = http_json("GET", f"{b}/recommend/topo-user?k=10")
    check(rb["source"] == "model" and rb["history_length"] == len(items), "API 2 sees API 1's events", results)
    check([x["item_id"] for x in ra["items"]] == [x["item_id"] for x in rb["items"]], "same answer on both", results)

    if retrain:
        pids = {name: p.pid for name, p in topo.procs.items()}
        old = versions[a]
        time.sleep(1.1)  # export names carry a second-resolution timestamp
        new_path = topo.train(dataset, train_args)
        new = json.loads((new_path / "manifest.json").read_text()).get("version")
        deadline = time.monotonic() + 60
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = {base: http_json("GET", f"{base}/readyz")[1]["bundles"][0]["version"] for base in (a, b)}
            if all(v == new for v in seen.values()):
                break
            time.sleep(0.5)
        check(old != new and all(v == new for v in seen.values()), "both APIs picked up the new bundle", results)
        check({n: p.pid for n, p in topo.procs.items()} == pids, "without a restart (same PIDs)", results)
        _, rb = http_json("GET", f"{b}/recommend/topo-user?k=10")
        check(rb["version"] == new and rb["history_length"] == len(items), "history kept across the swap", results)
        releases = sorted(p.name for p in (topo.bundle_root / "releases").iterdir())
        results["releases"] = releases


def live_loop(topo: Topology, dataset: str, train_args: str, users: int, results: dict) -> None:
    """Traffic in, snapshot, warm-start retrain, publish as treatment, per-variant online metrics."""
    sys.path.insert(0, str(ROOT))
    from training.data import prepare

    a, b = topo.bases()
    key = {"X-API-Key": topo.api_key}
    data = prepare(dataset)
    control = (topo.bundle_root / "sasrec").resolve()
    # The dataset's own events of the first `users` users, with their times, as live traffic;
    # the last event of each user is held back for the scored round below.
    events, last = [], {}
    for u in range(min(users, data.num_users)):
        seq, ts = data.sequence(u), data.times(u)
        times = ts if ts is not None else range(len(seq))
        for n, (i, t) in enumerate(zip(seq[:-1], times[:-1], strict=True)):
            ev = {"user_id": f"live-{data.user_ids[u]}", "item_id": data.item_ids[i - 1], "timestamp": float(t)}
            events.append({**ev, "event_id": f"e{n}"})
        last[f"live-{data.user_ids[u]}"] = data.item_ids[seq[-1] - 1]
    for i in range(0, len(events), 500):
        status, _ = http_json("POST", f"{(a, b)[i // 500 % 2]}/events", {"events": events[i : i + 500]}, key)
        if status != 200:
            raise SystemExit(f"POST /events: {status}")

    def scored_round(nxt: dict[str, str]) -> dict[str, int]:
        variants: dict[str, int] = {}
        for n, (user, item) in enumerate(nxt.items()):
            base = (a, b)[n % 2]
            _, rec = http_json("GET", f"{base}/recommend/{user}?k=10")
            variants[rec["variant"]] = variants.get(rec["variant"], 0) + 1
            ev = {"user_id": user, "item_id": item, "timestamp": time.time(), "event_id": f"next-{rec['variant']}"}
            status, out = http_json("POST", f"{(b, a)[n % 2]}/events", {"events": [ev]}, key)
            if status != 200:
                raise SystemExit(f"POST /events: {status} {out}")
        return variants

    before = scored_round(last)
    check(before == {"default": len(last)}, "live traffic served by the default bundle", results)
    t = time.monotonic()
    treatment = topo.train(
        dataset,
        train_args,
        REDIS_URL=topo.redis_url,
        PUBLISH="treatment",
        RELOAD_URLS=f"{a} {b}",
        SEQREC_API_KEY=topo.api_key,
    )
    results["live_retrain_seconds"] = round(time.monotonic() - t, 1)
    results["treatment"] = treatment.name
    ready = [http_json("GET", f"{base}/readyz")[1] for base in (a, b)]
    names = [sorted(x["name"] for x in r["bundles"]) for r in ready]
    check(
        all(n == sorted([control.name, treatment.name]) for n in names), "both APIs serve control + treatment", results
    )
    # The next events of the same users, now split between the variants.
    after = scored_round({u: it for u, it in zip(last, reversed(list(last.values())), strict=True)})
    check(set(after) == {"control", "treatment"}, "the experiment splits users between both bundles", results)
    time.sleep(1.5)  # tracking runs in the background; counters are flushed every second
    _, stats = http_json("GET", f"{a}/stats/online?minutes=60")
    rows = {r["variant"]: r for r in stats["variants"]}
    results["online"] = stats
    ok = all(rows.get(v, {}).get("scored", 0) > 0 for v in ("default", "control", "treatment"))
    check(ok, "GET /stats/online scores default, control and treatment", results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--train-args", default="--epochs 1 --max-users 1500")
    ap.add_argument("--workers-per-api", type=int, default=1)
    ap.add_argument("--no-retrain", action="store_true", help="Skip the second training run.")
    ap.add_argument("--bundle", type=Path, default=None, help="Serve this exported SASRec bundle; no first training.")
    ap.add_argument("--live", action="store_true", help="Then close the live loop (snapshot, warm start, A/B).")
    ap.add_argument("--live-users", type=int, default=300, help="Users whose events are replayed for --live.")
    ap.add_argument("--bench", type=float, default=0, help="Then run the mixed load for this many seconds.")
    ap.add_argument("--bench-out", type=Path, default=ROOT / "benchmarks/results/serving/mixed_load")
    ap.add_argument("--cluster", action="store_true", help="A 3-master, 3-replica Redis Cluster instead of one Redis.")
    ap.add_argument("--workdir", type=Path, default=None, help="Keep everything here (default: a temp dir, removed).")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="seqrec-topology-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cluster and args.bench:
        ap.error("--bench drives one Redis; for the cluster run benchmarks/serving/cluster_load.py")
    topo = Topology(workdir, workers_per_api=args.workers_per_api)
    if args.cluster:
        topo.cluster = ClusterProcs(workdir / "cluster", node_timeout_ms=5000, conf=DOCKER / "redis-cluster.conf")
    results: dict = {"workdir": str(workdir), "checks": []}
    try:
        try:
            topo.start_redis()
        except RedisNotInstalled as exc:
            sys.exit(str(exc))
        where = f"Redis Cluster {topo.cluster.ports}" if topo.cluster else f"redis-server on {topo.redis_port}"
        print(f"{where} (compose config)", flush=True)
        if args.bundle is not None:
            topo.publish(args.bundle)
        else:
            topo.train(args.dataset, args.train_args)
        topo.write_api_env()
        topo.start_apis()
        print(f"APIs on {topo.api_ports}", flush=True)
        drive(topo, args.dataset, args.train_args, not args.no_retrain, results)
        if args.live:
            live_loop(topo, args.dataset, args.train_args, args.live_users, results)
        if args.bench:
            run_and_report(topo, args.bench, args.bench_out, " ".join(["python", *sys.argv]))
    finally:
        topo.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
