"""Several `seqrec train` runs in one torchrun launch, on one process group.

    python -m torch.distributed.run --nproc_per_node=2 --standalone -m tests.support.ddp_runs RUNS.json

RUNS.json lists {"args": [...], "stdout": PREFIX}: each run is the CLI's own command, in process,
with this rank's stdout in PREFIX.rank<N>. The group is made here, once, so train() leaves it up
between runs (it ends only a group it made itself); starting torch and the group for every run
was most of what a small run under torchrun cost.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path


def main(spec: Path) -> None:
    import torch.distributed as dist

    from training.cli import app

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        for run in json.loads(spec.read_text()):
            out = Path(f"{run['stdout']}.rank{rank}")
            with out.open("w") as f, contextlib.redirect_stdout(f):
                code = app(run["args"], standalone_mode=False)
            if code:
                raise SystemExit(f"rank {rank}: {' '.join(run['args'])} exited with {code}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
