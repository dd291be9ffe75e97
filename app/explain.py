"""Why was an item recommended? Leave-one-out ablation of the newest history events.

For a user with history h (model indices, oldest first) and a recommended item i:

    contribution(e, i) = score(i | h) - score(i | h without event e)

for each of the newest N = min(len(h), SEQREC_EXPLAIN_N, max_len) events e. It is the model's own
answer to "what if this event had not happened" (an older event slides into the window when the
history is longer than the model reads), so it is faithful by construction, for every model kind:
it needs only the bundle's user encoder and item vectors. The N ablated histories and the full one
go through the encoder as ONE batch (N + 1 rows). A bundle may ship `ablation.onnx` (manifest
section `ablation`, contract in training/ablation.py): one graph that returns the same N + 1 user
vectors with less work (for a causal model the events older than a removed one keep their states);
explanations then call it when it is the cheaper of the two (long histories), and the numbers
are the same (checked at export and in tests).

Reported per item: up to `top` events with a positive contribution, largest first (ties: the newer
event), each with weight = contribution / (sum of the positive contributions of all N events), so
the weights of all positive events sum to 1 and the reported ones to at most 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.manifest import BundleError
from app.onnx_session import ort_session

if TYPE_CHECKING:
    from app.bundle import Bundle

TOP_EVENTS = 3


class AblationGraph:
    """ablation.onnx: (window (1, T), ages (A,)) -> (A + 1, D) leave-one-out user vectors."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.session = ort_session(path)
        self.window_name, self.ages_name = meta["inputs"]
        self.output_name: str = meta["output"]

    @staticmethod
    def cheaper(length: int, n: int, max_len: int) -> bool:
        """Whether the graph does less attention work than the batch: its first block scores about
        n x n x (length + n) query-key pairs, the batch (n + 1) x L x L (the same numbers either way;
        the graph wins on long histories, the batch on short ones)."""
        L = min(length, max_len)
        return n * n * (length + n) < (n + 1) * L * L

    def run(self, window: np.ndarray, n: int) -> np.ndarray:
        feed = {self.window_name: window[None], self.ages_name: np.arange(n, dtype=np.int64)}
        return self.session.run([self.output_name], feed)[0]


def load_ablation(path: Path, meta: Any, files: dict[str, str]) -> AblationGraph | None:
    """The manifest's `ablation` section as a graph; None for bundles without one."""
    if meta is None:
        return None
    inputs = meta.get("inputs") if isinstance(meta, dict) else None
    if meta.get("file") not in files or not isinstance(inputs, list) or len(inputs) != 2 or "output" not in meta:
        raise BundleError("manifest ablation must name a file with a checksum, two inputs and an output")
    return AblationGraph(path / meta["file"], meta)


def contributions(
    bundle: Bundle, seen: np.ndarray, labels: np.ndarray, n_max: int, times: np.ndarray | None = None
) -> np.ndarray:
    """(N, k) score drops: row a = removing the event of age a (0 = newest), column = labels[c].

    `times` (parallel to `seen`) for a bundle that reads event times: an ablation removes the
    event from both sequences."""
    n = min(len(seen), n_max, bundle.max_len)
    if n == 0 or len(labels) == 0:
        return np.zeros((0, len(labels)), np.float32)
    if bundle.needs_times:
        if times is None:
            raise ValueError(f"bundle {bundle.name} reads event times: pass the history's times")
        # A history transform may read any event (e.g. a gap to the next one): ablate the whole history.
        window = np.asarray(seen, dtype=np.int64)
        tw = np.asarray(times, dtype=np.int64)
        last = len(window) - 1
        hists = [window] + [np.delete(window, last - age) for age in range(n)]
        tms = [tw] + [np.delete(tw, last - age) for age in range(n)]
        users = bundle.user_vectors(hists, tms)  # (N + 1, D), one encoder call
    else:
        # Only the window (plus the one event that slides in when another is removed) affects a score.
        window = np.asarray(seen[-(bundle.max_len + 1) :], dtype=np.int64)
        graph = bundle.ablation
        if graph is not None and n >= 2 and len(window) >= 2 and graph.cheaper(len(window), n, bundle.max_len):
            users = graph.run(window, n)  # (N + 1, D)
        else:
            last = len(window) - 1
            hists = [window[-bundle.max_len :]] + [np.delete(window, last - age) for age in range(n)]
            users = bundle.user_vectors(hists)  # (N + 1, D), one encoder call
    scores = users.astype(np.float64) @ bundle.vectors(labels).astype(np.float64).T  # (N + 1, k)
    return (scores[0] - scores[1:]).astype(np.float32)


def explain(
    bundle: Bundle,
    seen: np.ndarray,
    labels: np.ndarray,
    n_max: int,
    top: int = TOP_EVENTS,
    times: np.ndarray | None = None,
) -> list[list[dict[str, Any]]]:
    """Per recommended item, its `top` most contributing history events (see the module docstring)."""
    contrib = contributions(bundle, seen, labels, n_max, times)
    if len(contrib) == 0:
        return [[] for _ in labels]
    window = seen[-len(contrib) :][::-1]  # newest first: window[age]
    ids = bundle.external(np.asarray(window, dtype=np.int64))
    out: list[list[dict[str, Any]]] = []
    for col in contrib.T:
        positive = np.clip(col, 0.0, None)
        total = float(positive.sum())
        order = np.argsort(-col, kind="stable")[:top]  # stable: newer event first on ties
        out.append(
            [
                {"item_id": ids[a], "age": int(a), "contribution": float(col[a]), "weight": float(col[a] / total)}
                for a in order
                if col[a] > 0
            ]
        )
    return out
