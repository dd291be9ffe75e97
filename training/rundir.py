"""What a training run writes into its directory (rank 0 only; other ranks write nothing):

  config.json          the resolved model, train and task settings, the data's statistics
  metrics.jsonl        one JSON line per epoch (loss, time, validation metrics)
  learning_curve.png   loss and validation NDCG@10/HR@10 per epoch
  final.json           validation and test metrics of the best checkpoint, stop reason

(best.pt, the best checkpoint, is training/checkpoint.py's.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Seconds between learning-curve redraws: a plot costs ~0.1 s, a GPU epoch can take ~0.5 s.
PLOT_EVERY_S = 10.0
# The per-epoch fields a log line shows (the file has them all).
SHOWN = ("epoch", "loss", "epoch_seconds", "valid_ndcg@10", "valid_hr@10", "raw_valid_ndcg@10")


class RunDir:
    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path, self.writes = path, writes
        self.history: list[dict[str, Any]] = []
        self._last_plot = time.perf_counter()
        path.mkdir(parents=True, exist_ok=True)
        if writes:
            (path / "metrics.jsonl").write_text("")

    def config(self, content: dict[str, Any]) -> None:
        if self.writes:
            (self.path / "config.json").write_text(json.dumps(content, indent=2))

    def epoch(self, row: dict[str, Any], last: bool, echo: bool) -> None:
        """Append an epoch's row; redraw the curve on the last epoch or every PLOT_EVERY_S;
        `echo`: print its main fields to stderr (when no progress bar shows them)."""
        if not self.writes:
            return
        self.history.append(row)
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if last or time.perf_counter() - self._last_plot >= PLOT_EVERY_S:
            plot_learning_curve(self.history, self.path / "learning_curve.png")
            self._last_plot = time.perf_counter()
        if echo:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k in SHOWN}
            print(json.dumps(shown), file=sys.stderr, flush=True)

    def row_of(self, epoch: int) -> dict[str, Any]:
        return next((r for r in self.history if r["epoch"] == epoch), {})

    def final(self, content: dict[str, Any]) -> None:
        if self.writes:
            (self.path / "final.json").write_text(json.dumps(content, indent=2))


def plot_learning_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ep = [r["epoch"] for r in history]
    ax1.plot(ep, [r["loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ev = [r for r in history if "valid_ndcg@10" in r]
    if ev:
        ax2 = ax1.twinx()
        ax2.plot(
            [r["epoch"] for r in ev], [r["valid_ndcg@10"] for r in ev], "o-", color="tab:red", label="valid NDCG@10"
        )
        ax2.plot(
            [r["epoch"] for r in ev], [r["valid_hr@10"] for r in ev], "s--", color="tab:orange", label="valid HR@10"
        )
        ax2.set_ylabel("validation (full ranking)")
        ax2.legend(loc="lower right")
    ax1.set_title("learning curve")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
