"""Helpers for benchmark scripts: machine description and result files."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
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


def write_result(name: str, payload: dict[str, Any], directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def step_benchmark_main(
    doc: str | None, cases: list[str], run_case: Callable[[str, int], dict[str, Any]], steps: int, name: str
) -> None:
    """The command line the training-step benchmarks share: cases, steps, threads, one result file."""
    import torch

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=cases, choices=cases)
    ap.add_argument("--steps", type=int, default=steps, help="training steps per case (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. what else ran)")
    ap.add_argument("--name", default=name, help="result file name under benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for case in args.cases:
        results[case] = run_case(case, args.steps)
        print(case, results[case], flush=True)
    path = write_result(args.name, {"threads": args.threads, "steps": args.steps, "note": args.note, "cases": results})
    print(f"wrote {path}")


def training_case(case: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
    """A step benchmark's case -> (dataset, leave-one-out split, train config, model, task), the
    model seeded so every benchmark starts from the same weights."""
    import torch

    from training.data import leave_one_out, prepare
    from training.evaluate import popularity_scores
    from training.zoo import build_model, get_spec, resolve

    spec = get_spec(case["model"])
    data = prepare(case["dataset"])
    split = leave_one_out(data)
    # case["train"] may hold the task options under "extra" (read by resolve) or case["task"]
    model_over, tc, task_cfg = resolve(case["model"], case["model_overrides"], case["train"], case.get("task"))
    torch.manual_seed(0)
    model = build_model(case["model"], data.num_items, model_over)
    task = spec.make_task(model.cfg, tc, task_cfg, popularity_scores(split.train, data.num_items))
    return data, split, tc, model, task
