"""Bundle reload time with many items registered online (POST /items), UniSRec on ML-100K.

  flock /tmp/seqrec-cpu.lock env PYTHONPATH=. python -m benchmarks.serving.reload_items \
      --items 10000 --out benchmarks/results/serving/reload_items.json

What is measured, through the HTTP API of one app on a private redis-server (no persistence).
Redis listens on a unix socket. Steps:
1. registering N items (batches of 100): each item is encoded once, its vector stored with it;
2. POST /admin/reload, `--reloads` times: the vectors are read back, nothing is encoded;
3. a process starting with the N items registered (lifespan: bundle load + catch-up);
4. for comparison, one reload with the vector cache emptied: every item encoded again, which is
   what every reload in every process cost before vectors were shared (the first load of a new
   bundle version still costs this once).
The bundle is trained here (1 epoch, 300 users, the shipped MiniLM text encoder) unless
--bundle names one. Item texts are real ML-100K texts, each with a distinct suffix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine_info

KEY = {"X-API-Key": "bench-key"}


def train_bundle(work: Path) -> Path:
    from training.data import item_text, prepare
    from training.export import export_bundle
    from training.train import train

    data = prepare("ml-100k")
    run = work / "run"
    cfg = {"dim": 32, "max_len": 30, "num_heads": 2, "mode": "inductive"}
    train("unisrec", data, run, cfg, {"epochs": 1, "max_users": 300, "batch_size": 128}, progress=False)
    return export_bundle(run / "best.pt", work / "bundles", name="bench-unisrec", item_text=item_text("ml-100k"))


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    """A private redis-server on a unix socket in `work` (no TCP port to collide on, no persistence)."""
    import redis

    exe = shutil.which("redis-server") or sys.exit("redis-server is not installed")
    sock = work / "redis.sock"
    args = ["--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no", "--dir", str(work)]
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    redis.Redis(unix_socket_path=str(sock)).ping()
    return proc, f"unix://{sock}?db=0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--bundle", type=Path, default=None, help="a UniSRec bundle (default: train a small one)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serving/reload_items.json"))
    args = ap.parse_args()

    import redis
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="reload-items-"))
    t0 = time.perf_counter()
    bundle = args.bundle or train_bundle(work)
    train_s = time.perf_counter() - t0
    texts = list(json.loads((bundle / "item_text.json").read_text()).values())
    proc, url = start_redis(work)
    settings = Settings(bundles=[bundle], redis_url=url, api_key=KEY["X-API-Key"], access_log=False)
    out: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "items": args.items}
    try:
        with TestClient(create_app(settings)) as c:
            t = time.perf_counter()
            for start in range(0, args.items, 100):
                batch = [
                    {"item_id": f"reg-{n}", "title": f"{texts[n % len(texts)]} edition {n}"}
                    for n in range(start, min(start + 100, args.items))
                ]
                r = c.post("/items", json={"items": batch}, headers=KEY)
                r.raise_for_status()
            register_s = time.perf_counter() - t
            reloads = []
            for _ in range(args.reloads):
                t = time.perf_counter()
                c.post("/admin/reload", headers=KEY).raise_for_status()
                reloads.append(time.perf_counter() - t)
            served = len(c.app.state.seqrec.registry.get(None).index_of)
            t = time.perf_counter()
            with TestClient(create_app(settings)) as c2:
                start_s = time.perf_counter() - t
                assert c2.get(f"/items/reg-{args.items - 1}").json()["models"] == ["bench-unisrec"]
            # The old behaviour: nothing shared, every registered item encoded again on reload.
            client = redis.Redis.from_url(url)
            for key in client.scan_iter(match="seqrec:itemvec:*"):
                client.delete(key)
            t = time.perf_counter()
            c.post("/admin/reload", headers=KEY).raise_for_status()
            uncached_s = time.perf_counter() - t
        out |= {
            "command": "flock /tmp/seqrec-cpu.lock env PYTHONPATH=. python -m benchmarks.serving.reload_items "
            f"--items {args.items} --out {args.out}",
            "bundle": bundle.name,
            "train_seconds": round(train_s, 1),
            "register_seconds": round(register_s, 2),
            "encode_ms_per_item": round(1e3 * register_s / args.items, 2),
            "reload_seconds": [round(x, 3) for x in reloads],
            "reload_seconds_max": round(max(reloads), 3),
            "process_start_seconds": round(start_s, 3),
            "reload_seconds_without_shared_vectors": round(uncached_s, 2),
            "catalogue_served_after_reload": served,
            "target_reload_seconds": 5.0,
            "met": max(reloads) < 5.0,
            "notes": "Reload with N registered items reads N cached vectors (one HMGET) instead of encoding N "
            "texts; the last figure is one reload with the cache emptied, i.e. the cost each reload paid in "
            "every process before. Encoding runs on one onnxruntime thread per process.",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
