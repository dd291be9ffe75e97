"""Training scales out with PyTorch's own DistributedDataParallel under torchrun (gloo on CPU).

Every run below is the CLI's `train` command on two ranks; they share one torchrun launch
(tests/support/ddp_runs.py), so torch and the process group start once for all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMON = ["train", "--dataset", "ml-100k", "--max-len", "20", "--dim", "16"]
RUNS = {
    "sasrec": ["--model", "sasrec", "--epochs", "2", "--max-users", "300"],
    **{
        model: ["--model", model, "--epochs", "1", "--max-users", "200", "--num-layers", "1"]
        for model in ("bert4rec", "gru4rec", "lrurec", "hstu")
    },
}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cache_dir: Path) -> dict[str, tuple[Path, str]]:
    """(run dir, what both ranks printed) per model, from one two-process torchrun launch."""
    work = tmp_path_factory.mktemp("ddp")
    runs = [
        {"args": [*COMMON, *args, "--out", str(work / name)], "stdout": str(work / name)} for name, args in RUNS.items()
    ]
    spec = work / "runs.json"
    spec.write_text(json.dumps(runs))
    env = {**os.environ, "SEQREC_DATA_DIR": str(data_dir), "SEQREC_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    cmd += ["-m", "tests.support.ddp_runs", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: (work / name, "".join((work / f"{name}.rank{r}").read_text() for r in (0, 1))) for name in RUNS}


def test_torchrun_two_processes(ddp_runs: dict[str, tuple[Path, str]]) -> None:
    run, stdout = ddp_runs["sasrec"]
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    assert lines[0]["test_ndcg@10"] is not None
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (run / "best.pt").is_file()


@pytest.mark.parametrize("model", ["bert4rec", "gru4rec", "lrurec", "hstu"])
def test_every_model_trains_under_torchrun(model: str, ddp_runs: dict[str, tuple[Path, str]]) -> None:
    # The same two-process gloo run as above for the other models: each rank trains its shard of
    # users through DistributedDataParallel, rank 0 evaluates and writes the checkpoint.
    run, stdout = ddp_runs[model]
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["valid_ndcg@10"] is not None
    assert (run / "best.pt").is_file()


def test_train_ends_only_a_process_group_it_made() -> None:
    """Several runs share a launch: train() leaves a group it found to its caller, and ends its own."""
    import training.train as tt

    calls: list[str] = []

    class FakeDist:
        def __init__(self, up: bool) -> None:
            self.up = up

        def is_initialized(self) -> bool:
            return self.up

        def init_process_group(self, backend: str) -> None:
            calls.append("init")
            self.up = True

        def get_rank(self) -> int:
            return 1

        def get_world_size(self) -> int:
            return 2

        def barrier(self) -> None:
            calls.append("barrier")

        def destroy_process_group(self) -> None:
            calls.append("destroy")

    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("WORLD_SIZE", "2")
        for up, want in ((True, ["barrier"]), (False, ["init", "barrier", "destroy"])):
            calls.clear()
            mp.setattr(tt, "dist", FakeDist(up))
            rank, world, made = tt._ddp()
            assert (rank, world, made) == (1, 2, not up)
            tt._ddp_finish(world, made)
            assert calls == want
    finally:
        mp.undo()
