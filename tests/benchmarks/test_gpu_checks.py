"""The prepared GPU script fails early and clearly, before any GPU time is spent training."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_checks.sh"


def run(tmp_path: Path, *parts: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *parts], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )


def test_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_refuses_to_run(tmp_path: Path) -> None:
    res = run(tmp_path, "sasrec")
    assert res.returncode == 2 and "no CUDA device" in res.stderr


def test_a_missing_dataset_cache_names_the_command_that_makes_it(tmp_path: Path) -> None:
    res = run(tmp_path, "sasrec", GPU_CHECKS_DRY_RUN="1", SEQREC_CACHE_DIR=str(tmp_path / "empty"))
    assert res.returncode == 2 and "seqrec prepare ml-1m" in res.stderr


def test_an_unknown_part_is_an_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-1m.v1.npz").write_bytes(b"")  # never read: the part name is checked first
    res = run(tmp_path, "sasrek", GPU_CHECKS_DRY_RUN="1", SEQREC_CACHE_DIR=str(cache))
    assert res.returncode == 1 and "unknown part 'sasrek'" in res.stderr
