"""Time `seqrec demo` from the command to a serving demo page, and record the demo model's quality.

Runs the demo as `make demo` does (a fresh prepared-data cache, run and bundle directories, so
prepare, train, evaluate and export are all timed), polls the page until it answers, then stops
the server. Writes benchmarks/results/training/demo.json: seconds to the page, the phases, test
NDCG@10 / HR@10 of the demo model, the machine (CPU) and its load average when the run started.

    flock /tmp/seqrec-cpu.lock python -m benchmarks.training.demo_time [--recipe recipes/demo-ml-1m.toml]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.common import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _page_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and b"<html" in r.read(4096).lower()
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/demo-ml-1m.toml")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. what else ran)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args()

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="seqrec-demo-") as tmp:
        port = _free_port()
        run_dir, art = Path(tmp) / "run", Path(tmp) / "artifacts"
        cmd = [sys.executable, "-m", "training.cli", "demo", "--recipe", args.recipe, "--out", str(run_dir)]
        cmd += ["--artifacts", str(art), "--port", str(port), "--cache-dir", str(Path(tmp) / "cache")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[tuple[float, str]] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((round(time.perf_counter() - t0, 2), line.rstrip()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        url = f"http://127.0.0.1:{port}/"
        serving = None
        while time.perf_counter() - t0 < args.timeout and proc.poll() is None:
            if _page_up(url):
                serving = time.perf_counter() - t0
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(timeout=5)
        if serving is None:
            print("\n".join(line for _, line in lines[-30:]), file=sys.stderr)
            sys.exit(f"demo_time: no page at {url} (exit {proc.returncode})")
        final = json.loads((run_dir / "final.json").read_text())
        epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        manifest = json.loads(next(art.glob("demo-*/manifest.json")).read_text())

    def first(prefix: str) -> float | None:  # when the demo printed a line starting with `prefix`
        return next((t for t, line in lines if line.startswith(prefix)), None)

    result = {
        "recipe": args.recipe,
        "seconds_to_serving_page": round(serving, 1),
        "target_seconds": 180,
        "phases_seconds": {  # when each step's output appeared, from the command's start
            "prepared": first('{"name"'),
            "trained": first('{"run_dir"'),
            "evaluated": first('  "split"'),
            "exported": next((t for t, line in lines if line.rstrip().endswith("/demo-sasrec")), None),
            "page_served": round(serving, 1),
        },
        "train_seconds": final["train_seconds"],
        "epochs_run": final["epochs_run"],
        # slow epochs mean other work shared the two cores (compare with an idle machine's)
        "epoch_seconds": [r["epoch_seconds"] for r in epochs],
        "stop_reason": final["stop_reason"],
        "test": {k: round(final["test"][k], 4) for k in ("ndcg@10", "hr@10", "ndcg@20", "hr@20")},
        "valid": {k: round(final["valid"][k], 4) for k in ("ndcg@10", "hr@10")},
        "target_test_ndcg@10": 0.12,
        "bundle_files": sorted(manifest["files"]),
        "load_average_at_start": load_before,
        "note": args.note,
    }
    path = write_result("demo", result, args.results_dir)
    print(json.dumps({"result": str(path), **{k: result[k] for k in ("seconds_to_serving_page", "test")}}))


if __name__ == "__main__":
    main()
