"""ablation.onnx: the leave-one-out user vectors explanations need, as one graph (optional in a bundle).

Contract (manifest `ablation` section, read by app/serving/explain.py):
    window (1, T) int64: the newest T events, oldest first, no padding, 2 <= T <= max_len + 1
    ages   (A,)   int64: 0, 1, ..., A - 1 with 2 <= A <= min(T, max_len)
 -> user_vec (A, D): row a = the user vector of the history without its event of age a
    (0 = newest), i.e. what model.onnx returns for those A histories. The history's own vector is
    not in it (`"history_row": false` in the section): the caller scored the items with it
    already. Bundles written before carry no `history_row` key and return A + 1 rows, row 0 being
    the history's own vector; app/serving/explain.py reads both. It is written for models whose
    `ablations` method computes this with less work than A separate histories (SASRec: causal
    attention shares the older events' states) and checked against the model's own forward on
    the explicit histories at export.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.layers import SeqRecModel

ABLATION_FILE = "ablation.onnx"
INPUTS = ("window", "ages")
OUTPUT = "user_vec"


class _Ablations(nn.Module):
    def __init__(self, model: SeqRecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, window: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        return self.model.ablations(window, ages)  # type: ignore[operator]


def supports_ablation_graph(model: SeqRecModel) -> bool:
    """A model offers the graph by implementing `ablations` (and saying it applies to its config)."""
    check = getattr(model, "ablation_shares_prefix", None)
    return callable(getattr(model, "ablations", None)) and callable(check) and bool(check())


def reference(model: SeqRecModel, window: np.ndarray, n: int) -> np.ndarray:
    """(n + 1, D) by the definition: forward on the history (row 0) and on each history without
    one event (row 1 + a: without the event of age a)."""
    L = model.max_len
    hists = [window[-L:]] + [np.delete(window, len(window) - 1 - a)[-L:] for a in range(n)]
    with torch.no_grad():
        return np.concatenate([model(torch.as_tensor(h[None].astype(np.int64))).numpy() for h in hists])


def write_ablation_graph(model: SeqRecModel, out_dir: Path, opset: int) -> dict[str, Any] | None:
    """Write ablation.onnx when the model supports it; returns the manifest section (or None).

    Raises ValueError when the exported graph disagrees with the definition."""
    if not supports_ablation_graph(model):
        return None
    import onnxruntime as ort

    path = out_dir / ABLATION_FILE
    L = model.max_len
    example = (torch.as_tensor(np.arange(1, 7, dtype=np.int64)[None] % model.num_items + 1), torch.arange(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Ablations(model).eval(),  # a fresh module is in training mode, which export restores
            example,
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={INPUTS[0]: {1: "length"}, INPUTS[1]: {0: "events"}, OUTPUT: {0: "rows"}},
            opset_version=opset,
            dynamo=False,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    # The window's extremes: 2 events, short, exactly max_len, max_len + 1 (one event slides in);
    # A even and odd (the folded rows of SASRec's graph pair ablations a and A - a).
    cases = [(2, 2), (5, 3), (min(L, 9), min(L, 9)), (L, L), (L, L - 1), (L + 1, L), (L + 1, min(L, 50))]
    for T, A in cases:
        window = rng.integers(1, model.num_items + 1, size=T).astype(np.int64)
        got = sess.run([OUTPUT], {INPUTS[0]: window[None], INPUTS[1]: np.arange(A, dtype=np.int64)})[0]
        worst = max(worst, float(np.abs(got - reference(model, window, A)[1:]).max()))
    return {
        "file": ABLATION_FILE,
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "history_row": False,
        "parity_max_abs_diff": worst,
    }
