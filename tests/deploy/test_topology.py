"""scripts/local_topology.py end to end on a tiny training run: the compose topology without Docker.

Runs docker/train-job.sh twice (prepare/train/export/publish), redis-server with the compose
config, two API processes started by the serving image's entrypoint, and the script's checks
(shared Redis across APIs, API key from api.env, new bundle picked up without a restart).
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
def test_local_topology_script(cache_dir: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "scripts/local_topology.py",
        "--dataset",
        "ml-100k",
        "--train-args",
        "--epochs 1 --max-users 200 --dim 16 --num-layers 1 --max-len 30",
        "--workdir",
        str(tmp_path / "topology"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQREC_CACHE_DIR": str(cache_dir)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    summary = json.loads(r.stdout[r.stdout.rindex("\n{") :])
    checks = {c["check"]: c["ok"] for c in summary["checks"]}
    assert len(checks) == 8 and all(checks.values()), checks
    assert len(summary["releases"]) == 2  # two training runs, both kept (KEEP=3)
    # The API processes ran from the entrypoint and shut down cleanly on SIGTERM.
    for log in (tmp_path / "topology").glob("api*.log"):
        assert "Traceback" not in log.read_text()
