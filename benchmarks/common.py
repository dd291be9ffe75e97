"""Helpers for benchmark scripts: machine description and result files."""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info

RESULTS = Path(__file__).parent / "results"


def _git_commit() -> str | None:
    with contextlib.suppress(OSError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        return out.stdout.strip() or None
    return None


# Read when the benchmark starts: a run of hours measures the code it loaded, not the commit
# HEAD has moved to by the time the result is written.
START_COMMIT = _git_commit()


def machine() -> dict[str, Any]:
    """machine_info() (cores, CPU model, RAM) plus the torch build and the commit measured."""
    info: dict[str, Any] = dict(machine_info())
    info["platform"] = platform.platform()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    if START_COMMIT:
        info["git_commit"] = START_COMMIT
    return info


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
