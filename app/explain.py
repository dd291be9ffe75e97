"""Why was an item recommended? Leave-one-out ablation of the newest history events.

For a user with history h (model indices, oldest first) and a recommended item i:

    contribution(e, i) = score(i | h) - score(i | h without event e)

for each of the newest N = min(len(h), SEQREC_EXPLAIN_N, max_len) events e. It is the model's own
answer to "what if this event had not happened" (an older event slides into the window when the
history is longer than the model reads), so it is faithful by construction, for every model kind:
it needs only the bundle's user encoder and item vectors. The N ablated histories and the full one
go through the encoder as ONE batch (N + 1 rows).

Reported per item: up to `top` events with a positive contribution, largest first (ties: the newer
event), each with weight = contribution / (sum of the positive contributions of all N events), so
the weights of all positive events sum to 1 and the reported ones to at most 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from app.bundle import Bundle

TOP_EVENTS = 3


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
