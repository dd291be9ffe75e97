"""A bundle's ablation graph (ablation.onnx, contract in training/ablation.py): the leave-one-out
user vectors that explanations (app/serving/explain.py) read, in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.bundles.manifest import BundleError
from app.bundles.onnx import ThreadedSessions, ort_session


class AblationGraph:
    """ablation.onnx: (window (1, T), ages (A,)) -> (A, D) leave-one-out user vectors."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.session = ort_session(path)
        self.sessions = ThreadedSessions(path, self.session)
        self.window_name, self.ages_name = meta["inputs"]
        self.output_name: str = meta["output"]
        # Graphs written before `history_row` existed return the history's own vector first, and
        # compute a square suffix: their own, older cost rule (first-block query-key pairs).
        self.skip = 1 if meta.get("history_row", True) else 0
        if self.skip:
            self.cheaper = _square_suffix_cheaper  # type: ignore[method-assign]  # per graph version

    @staticmethod
    def cheaper(length: int, n: int, max_len: int) -> bool:
        """Whether the graph is faster than the batch for a window of `length` events, n ablations.

        The batch encodes n + 1 rows of L = min(length, max_len) tokens; the graph encodes the
        window once plus about n^2 / 2 tokens, but has more nodes, a larger fixed cost per call.
        Measured with one thread (SASRec, d = 64, 2 blocks; benchmarks/explain/explain_latency.py
        --crossover, 144 (window, n) points): the graph is faster once L >= 16 and n x L >= 100
        (e.g. n = 2 from 50 events, n = 4 from 25, n >= 7 from 16), the batch below (by up to
        0.2 ms); where this rule picks the slower one, it is slower by at most 0.05 ms."""
        L = min(length, max_len)
        return L >= 16 and n * L >= 100

    def run(self, window: np.ndarray, n: int, threads: int = 1) -> np.ndarray:
        """(n, D): row a = the user vector of the window without its event of age a."""
        feed = {self.window_name: window[None], self.ages_name: np.arange(n, dtype=np.int64)}
        out: np.ndarray = self.sessions.get(threads).run([self.output_name], feed)[0]
        return out[self.skip :]


def _square_suffix_cheaper(length: int, n: int, max_len: int) -> bool:
    """The older graphs' rule: about n x n x (length + n) first-block pairs against (n + 1) x L x L."""
    L = min(length, max_len)
    return n * n * (length + n) < (n + 1) * L * L


def load_ablation(path: Path, meta: Any, files: dict[str, str]) -> AblationGraph | None:
    """The manifest's `ablation` section as a graph; None for bundles without one."""
    if meta is None:
        return None
    inputs = meta.get("inputs") if isinstance(meta, dict) else None
    if meta.get("file") not in files or not isinstance(inputs, list) or len(inputs) != 2 or "output" not in meta:
        raise BundleError("manifest ablation must name a file with a checksum, two inputs and an output")
    if not isinstance(meta.get("history_row", True), bool):
        raise BundleError("manifest ablation.history_row must be true or false")
    return AblationGraph(path / meta["file"], meta)
