"""Training scales out with PyTorch's own DistributedDataParallel under torchrun (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_torchrun_two_processes(tmp_path: Path, data_dir: Path, cache_dir: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "SEQREC_DATA_DIR": str(data_dir), "SEQREC_CACHE_DIR": str(cache_dir)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "training.cli",
        "train",
        "--model",
        "sasrec",
        "--dataset",
        "ml-100k",
        "--epochs",
        "2",
        "--max-users",
        "300",
        "--max-len",
        "20",
        "--dim",
        "16",
        "--out",
        str(run),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    assert lines[0]["test_ndcg@10"] is not None
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (run / "best.pt").is_file()


@pytest.mark.parametrize("model", ["bert4rec", "gru4rec", "lrurec", "hstu"])
def test_every_model_trains_under_torchrun(model: str, tmp_path: Path, data_dir: Path, cache_dir: Path) -> None:
    # The same two-process gloo run as above for the other models: each rank trains its shard of
    # users through DistributedDataParallel, rank 0 evaluates and writes the checkpoint.
    run = tmp_path / model
    env = {**os.environ, "SEQREC_DATA_DIR": str(data_dir), "SEQREC_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "training.cli"]
    cmd += ["train", "--model", model, "--dataset", "ml-100k", "--epochs", "1", "--max-users", "200"]
    cmd += ["--max-len", "20", "--dim", "16", "--num-layers", "1", "--out", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["valid_ndcg@10"] is not None
    assert (run / "best.pt").is_file()
