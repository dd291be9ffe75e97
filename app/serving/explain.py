"""Why was an item recommended? Leave-one-out ablation of the newest history events.

For a user with history h (model indices, oldest first) and a recommended item i:

    contribution(e, i) = score(i | h) - score(i | h without event e)

for each of the newest N = min(len(h), SEQREC_EXPLAIN_N, max_len) events e. It is the model's own
answer to "what if this event had not happened" (an older event slides into the window when the
history is longer than the model reads), so it is faithful by construction, for every model kind:
it needs only the bundle's user encoder and item vectors. The N ablated histories and the full one
go through the encoder as ONE batch (N + 1 rows). A bundle may ship `ablation.onnx` (manifest
section `ablation`, contract in training/ablation.py): one graph that returns the same N ablated
user vectors with less work (for a causal model the events older than a removed one keep their
states); the history's own vector then comes from the caller, which scored the items with it.
Explanations call the graph when it is the faster of the two (measured: `AblationGraph.cheaper`),
and the numbers are the same (checked at export and in tests). That one large call per request may run on
SEQREC_EXPLAIN_THREADS intra-op threads (its own sessions, opened on first use; the plain path
keeps one thread per worker); the contributions agree with the one-thread ones within 1e-5.

Reported per item: up to `top` events with a positive contribution, largest first (ties: the newer
event), each with weight = contribution / (sum of the positive contributions of all N events), so
the weights of all positive events sum to 1 and the reported ones to at most 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from app.bundles.bundle import Bundle

TOP_EVENTS = 3


def ablation_batch(window: np.ndarray, n: int, max_len: int, pad: int) -> np.ndarray:
    """(n + 1, W) left-padded encoder input, W = min(T, max_len): row 0 = the newest W events of the
    window (T events, oldest first), row 1 + a = the newest W - (T <= max_len) events of the window
    without its event of age a. Built by index arithmetic, not n copies (a large share of the
    batched path's cost at N = 50)."""
    T = len(window)
    W = min(T, max_len)
    pos = np.arange(W) + (T - 1 - W)  # (W,) position in the (T - 1)-event ablated sequence; < 0 = padding
    removed = (T - 1 - np.arange(n))[:, None]  # (n, 1) window position of the event of age a
    src = pos[None] + (pos[None] >= removed)  # (n, W) window position each column comes from
    out = np.empty((n + 1, W), np.int64)
    out[0] = window[-W:]
    out[1:] = np.where(pos[None] >= 0, window[np.clip(src, 0, None)], pad)
    return out


def contributions(
    bundle: Bundle,
    seen: np.ndarray,
    labels: np.ndarray,
    n_max: int,
    times: np.ndarray | None = None,
    threads: int = 1,
    user: np.ndarray | None = None,
) -> np.ndarray:
    """(N, k) score drops: row a = removing the event of age a (0 = newest), column = labels[c].

    `times` (parallel to `seen`) for a bundle that reads event times: an ablation removes the
    event from both sequences. `threads`: intra-op threads of the one encoder call. `user` (D,):
    the history's own user vector when the caller has it (it scored the items with it); the
    ablation graph does not recompute it (the batch does, in the same call, so it is not read there)."""
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
        users = bundle.user_vectors(hists, tms, threads=threads)  # (N + 1, D), one encoder call
    else:
        # Only the window (plus the one event that slides in when another is removed) affects a score.
        window = np.asarray(seen[-(bundle.max_len + 1) :], dtype=np.int64)
        graph = bundle.ablation
        if graph is not None and n >= 2 and len(window) >= 2 and graph.cheaper(len(window), n, bundle.max_len):
            if user is None:
                user = bundle.padded_vectors(window[None, -bundle.max_len :])[0]
            users = np.concatenate([np.asarray(user, np.float32).reshape(1, -1), graph.run(window, n, threads)])
        else:
            batch = ablation_batch(window, n, bundle.max_len, bundle.padding_index)  # (N + 1, W)
            users = bundle.padded_vectors(batch, threads)  # (N + 1, D), one encoder call
    scores = users.astype(np.float64) @ bundle.vectors(labels).astype(np.float64).T  # (N + 1, k)
    contrib: np.ndarray = (scores[0] - scores[1:]).astype(np.float32)
    return contrib


def explain(
    bundle: Bundle,
    seen: np.ndarray,
    labels: np.ndarray,
    n_max: int,
    top: int = TOP_EVENTS,
    times: np.ndarray | None = None,
    threads: int = 1,
    user: np.ndarray | None = None,
) -> list[list[dict[str, Any]]]:
    """Per recommended item, its `top` most contributing history events (see the module docstring).
    `user`: the history's own user vector, if the caller has it (see `contributions`)."""
    contrib = contributions(bundle, seen, labels, n_max, times, threads, user)
    if len(contrib) == 0:
        return [[] for _ in labels]
    return top_events(contrib, bundle.external(np.asarray(seen[-len(contrib) :][::-1], dtype=np.int64)), top)


def top_events(contrib: np.ndarray, ids: list[str], top: int = TOP_EVENTS) -> list[list[dict[str, Any]]]:
    """(N, k) contributions and the N events' item ids (newest first) -> per item, its `top`
    positive events, largest first (ties: the newer), with weights. All k items in one argsort and
    a few array operations (per-item NumPy calls cost ~0.1 ms a request at k = 10)."""
    cols = np.ascontiguousarray(contrib.T)  # (k, N): one row per item
    order = np.argsort(-cols, axis=1, kind="stable")[:, :top]  # (k, top); stable: newer event first on ties
    best = np.take_along_axis(cols, order, axis=1)  # (k, top)
    total = np.clip(cols, 0.0, None).sum(axis=1, keepdims=True)  # (k, 1) sum of the positive contributions
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = best / total  # (k, top); read only where best > 0, so total > 0
    rows = zip(order.tolist(), best.tolist(), weight.tolist(), strict=True)
    return [
        [{"item_id": ids[a], "age": a, "contribution": c, "weight": w} for a, c, w in zip(*row, strict=True) if c > 0]
        for row in rows
    ]
