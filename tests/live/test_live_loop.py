"""The live loop end to end through real processes: scripts/local_topology.py --live.

redis-server with the compose config, two API processes from the serving image's entrypoint,
docker/train-job.sh twice: offline first, then the live loop (snapshot of the event store ->
warm-start train from the served bundle -> export -> publish as the treatment of an experiment
on both APIs), with real ML-100K events as traffic and per-variant online metrics read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.real_data("ml-100k")  # the training job prepares ML-100K itself, in a subprocess
def test_live_loop_through_the_topology(cache_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "topology"
    cmd = [sys.executable, "scripts/local_topology.py", "--dataset", "ml-100k", "--no-retrain", "--live"]
    cmd += ["--live-users", "150", "--workdir", str(work)]
    cmd += ["--train-args", "--epochs 1 --max-users 200 --dim 16 --num-layers 1 --max-len 30"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQREC_CACHE_DIR": str(cache_dir)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    summary = json.loads(r.stdout[r.stdout.rindex("\n{") :])
    checks = {c["check"]: c["ok"] for c in summary["checks"]}
    assert all(checks.values()) and "GET /stats/online scores default, control and treatment" in checks, checks
    assert "[train-job] snapshot of the event store" in out
    assert "warm start from" in out and "items kept" in out  # the retrain started from the served bundle
    assert "published" in out and "-treatment -> releases/" in out
    rows = {row["variant"]: row for row in summary["online"]["variants"]}
    assert rows["control"]["bundle"] != rows["treatment"]["bundle"]
    assert rows["control"]["scored"] + rows["treatment"]["scored"] == 150
    assert summary["online"]["experiment"].startswith("control=")
    for log in work.glob("api*.log"):
        assert "Traceback" not in log.read_text()
