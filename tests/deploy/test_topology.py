"""scripts/local_topology.py end to end on tiny training runs: the compose topology without Docker,
then the live loop through it. One run of the script serves both tests (its processes and three
training jobs are most of this module's time); each test reads its own part of the run.

The topology: docker/train-job.sh (prepare/train/export/publish), redis-server with the compose
config, two API processes started by the serving image's entrypoint, and the script's checks
(shared Redis across APIs, API key from api.env, new bundle picked up without a restart).

The live loop (--live): real ML-100K events as traffic, then the job once more in its live form
(snapshot of the event store -> warm-start train from the served bundle -> export -> publish as
the treatment of an experiment on both APIs), and per-variant online metrics read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIVE_USERS = 150


@dataclass(frozen=True)
class Run:
    returncode: int
    out: str  # stdout + stderr
    summary: dict
    workdir: Path


@pytest.fixture(scope="module")
def topology_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("topology")
    cmd = [sys.executable, "scripts/local_topology.py", "--dataset", "ml-100k", "--live"]
    cmd += ["--live-users", str(LIVE_USERS), "--workdir", str(work)]
    cmd += ["--train-args", "--epochs 1 --max-users 200 --dim 16 --num-layers 1 --max-len 30"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQREC_CACHE_DIR": str(cache_dir)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = json.loads(r.stdout[r.stdout.rindex("\n{") :]) if "\n{" in r.stdout else {}
    return Run(r.returncode, r.stdout + r.stderr, summary, work)


@pytest.mark.real_data("ml-100k")  # the training job prepares ML-100K itself, in a subprocess
def test_local_topology_script(topology_run: Run) -> None:
    r = topology_run
    assert r.returncode == 0, r.out[-8000:]
    checks = {c["check"]: c["ok"] for c in r.summary["checks"]}
    topology = [c for c in checks if c in TOPOLOGY_CHECKS]
    assert len(topology) == 8 and all(checks[c] for c in topology), checks
    assert len(r.summary["releases"]) == 2  # two training runs, both kept (KEEP=3)
    # The API processes ran from the entrypoint and shut down cleanly on SIGTERM.
    for log in r.workdir.glob("api*.log"):
        assert "Traceback" not in log.read_text()


@pytest.mark.real_data("ml-100k")
def test_live_loop_through_the_topology(topology_run: Run) -> None:
    r = topology_run
    out, summary = r.out, r.summary
    assert r.returncode == 0, out[-6000:]
    checks = {c["check"]: c["ok"] for c in summary["checks"]}
    assert all(checks.values()) and "GET /stats/online scores default, control and treatment" in checks, checks
    assert "[train-job] snapshot of the event store" in out
    assert "warm start from" in out and "items kept" in out  # the retrain started from the served bundle
    assert "published" in out and "-treatment -> releases/" in out
    rows = {row["variant"]: row for row in summary["online"]["variants"]}
    assert rows["control"]["bundle"] != rows["treatment"]["bundle"]
    assert rows["control"]["scored"] + rows["treatment"]["scored"] == LIVE_USERS
    assert summary["online"]["experiment"].startswith("control=")
    for log in r.workdir.glob("api*.log"):
        assert "Traceback" not in log.read_text()


# The script's checks of the topology itself (the live loop adds its own after them).
TOPOLOGY_CHECKS = {
    "both APIs serve the same bundle",
    "events accepted by API 1",
    "writes without the key from api.env are refused (401)",
    "API 2 sees API 1's events",
    "same answer on both",
    "both APIs picked up the new bundle",
    "without a restart (same PIDs)",
    "history kept across the swap",
}
