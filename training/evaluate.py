"""Full-ranking evaluation: HR@K, NDCG@K, MRR@K over the whole catalogue.

The target's rank is the number of catalogue items scored strictly higher than it
(0 = top). Items in the user's history are excluded from the ranking by default
(`exclude_history=True`): a film already watched is not a recommendation. The target
itself is never excluded, even when it also occurs in the history (re-consumption).
Padding (index 0) and any model-internal extra rows (e.g. BERT4Rec's [mask]) are never
ranked.

Sampled metrics (target vs. 100 sampled negatives) exist only under the explicit
`sampled=` option and are reported with a `sampled_` prefix: they overstate quality
and are not comparable to full-ranking numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from training.batching import pad_left

DEFAULT_KS = (1, 5, 10, 20)
ScoreFn = Callable[..., torch.Tensor]  # (B, L) item_seq[, (B, L) time_seq] -> (B, >= N+1) scores
# Scores held at once when ranking against an item table: users x items past this are ranked a
# block of items at a time (16M floats, 64 MB), so a 1M-item catalogue never needs users x items.
EVAL_CHUNK_ELEMENTS = 1 << 24
# (items, times) of one history -> the (items, times) the model reads (e.g. dwell repetition,
# app/bundles/history.py): applied before the max_len cut, exactly as the service applies it.
HistoryFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS, prefix: str = "") -> dict[str, float]:
    """ranks: (U,) 0-based rank of each target. Averages over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"{prefix}hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"{prefix}ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0
        out[f"{prefix}mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()) if len(ranks) else 0.0
    return out


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, histories: Sequence[np.ndarray] | None, num_items: int
) -> torch.Tensor:
    """0-based full-catalogue rank of each target. scores: (B, >= N+1); targets: (B,)."""
    scores = scores[:, : num_items + 1].float().clone()  # (B, N+1): drop model-internal rows
    scores[:, 0] = -torch.inf
    # Taken before history masking: masking must never hide the target itself.
    target_scores = scores.gather(1, targets[:, None]).clone()  # (B, 1)
    if histories is not None:
        rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(histories)]) if histories else []
        cols = np.concatenate(histories) if histories else []
        if len(rows):
            scores[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
    return (scores > target_scores).sum(dim=1)


def chunked_target_ranks(
    users: torch.Tensor,
    table: torch.Tensor,
    targets: torch.Tensor,
    histories: Sequence[np.ndarray] | None,
    num_items: int,
    chunk_elements: int = EVAL_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """target_ranks for scores = users @ table.T, computed a block of items at a time.

    users: (B, D); table: (>= N+1, D); targets: (B,). Peak memory is one (B, C) block, C =
    chunk_elements // B items. Each target's own score is its row of that product (fp32); the
    target's own entry in its block is skipped, so rounding can never count it above itself.
    """
    u, w = users.float(), table[: num_items + 1].float()
    target_scores = (u * w[targets]).sum(1, keepdim=True)  # (B, 1)
    rows = cols = None
    if histories is not None and len(histories):
        rows = torch.as_tensor(np.concatenate([np.full(len(h), i) for i, h in enumerate(histories)]), dtype=torch.long)
        cols = torch.as_tensor(np.concatenate(histories), dtype=torch.long)
        rows, cols = rows.to(u.device), cols.to(u.device)
    step = max(1, chunk_elements // max(len(u), 1))
    ranks = torch.zeros(len(u), dtype=torch.long, device=u.device)
    for a in range(1, num_items + 1, step):  # row 0 (padding) is never ranked
        b = min(a + step, num_items + 1)
        z = u @ w[a:b].T  # (B, C)
        if rows is not None and cols is not None:
            hit = (cols >= a) & (cols < b)
            z[rows[hit], cols[hit] - a] = -torch.inf
        own = (targets >= a) & (targets < b)
        z[own.nonzero(as_tuple=True)[0], targets[own] - a] = -torch.inf
        ranks += (z > target_scores).sum(1)
    return ranks


@torch.no_grad()
def full_rank_eval(
    score_fn: ScoreFn,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    max_len: int,
    batch_size: int = 512,
    exclude_history: bool = True,
    ks: Sequence[int] = DEFAULT_KS,
    device: str | torch.device = "cpu",
    return_ranks: bool = False,
    times: Sequence[np.ndarray] | None = None,
    transform: HistoryFn | None = None,
    pass_times: bool = False,
    item_table: torch.Tensor | None = None,
    chunk_elements: int = EVAL_CHUNK_ELEMENTS,
    types: Sequence[np.ndarray] | None = None,
) -> dict[str, float] | tuple[dict[str, float], np.ndarray]:
    """Score every user's history, rank the held-out target against the full catalogue.

    `times` (parallel to `histories`) are the history events' unix seconds: `transform` maps
    each (items, times) to what the model reads, and with `pass_times` the padded times go to
    `score_fn(seq, time_seq)`. The items excluded from the ranking are always the original
    history's: a transform changes what the model reads, never what counts as seen.

    With `item_table` ((>= N+1, D), e.g. model.item_vectors()), `score_fn` returns user vectors
    (B, D) instead of scores, and once a batch's users x items passes `chunk_elements` the ranks
    come from chunked_target_ranks: memory bounded by the block, not the catalogue.

    `types` (parallel to `histories`): each history's event type ids, padded and passed as
    `score_fn(seq, type_seq)` (a model that reads types, training/event_types.py).
    """
    n = len(histories)
    if (transform is not None or pass_times) and (times is None or len(times) != n):
        raise ValueError("this model reads event times: pass `times` parallel to the histories")
    if types is not None and (len(types) != n or transform is not None or pass_times):
        raise ValueError("event types: pass one type array per history, and no event times")
    order = np.argsort([len(h) for h in histories], kind="stable")  # similar lengths batch together
    ranks = np.zeros(n, np.int64)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        hist = [histories[i] for i in idx]
        if times is not None and (transform is not None or pass_times):
            rows = [(histories[i], times[i]) for i in idx]
            if transform is not None:
                rows = [transform(h, t) for h, t in rows]
            seq = torch.as_tensor(pad_left([h[-max_len:] for h, _ in rows]), device=device)
            if pass_times:
                tseq = torch.as_tensor(pad_left([np.asarray(t, np.int64)[-max_len:] for _, t in rows]), device=device)
                scores = score_fn(seq, tseq)
            else:
                scores = score_fn(seq)
        elif types is not None:
            seq = torch.as_tensor(pad_left([h[-max_len:] for h in hist]), device=device)
            yseq = torch.as_tensor(pad_left([np.asarray(types[i], np.int64)[-max_len:] for i in idx]), device=device)
            scores = score_fn(seq, yseq)
        else:
            seq = torch.as_tensor(pad_left([h[-max_len:] for h in hist]), device=device)
            scores = score_fn(seq)
        tgt = torch.as_tensor(targets[idx], device=device)
        seen = hist if exclude_history else None
        if item_table is None:
            r = target_ranks(scores, tgt, seen, num_items)
        elif len(idx) * (num_items + 1) > chunk_elements:
            r = chunked_target_ranks(scores, item_table, tgt, seen, num_items, chunk_elements)
        else:  # small enough to score whole: exactly the scores a score_fn would return
            r = target_ranks(scores @ item_table.T, tgt, seen, num_items)
        ranks[idx] = r.cpu().numpy()
    metrics = metrics_from_ranks(ranks, ks)
    metrics["users"] = float(n)
    return (metrics, ranks) if return_ranks else metrics


@torch.no_grad()
def sampled_eval(
    score_fn: ScoreFn,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    max_len: int,
    num_negatives: int = 100,
    popularity: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 512,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Target vs. `num_negatives` negatives (uniform, or by popularity when given). Labelled `sampled_`."""
    rng = np.random.default_rng(seed)
    p = None
    if popularity is not None:
        p = np.asarray(popularity[1 : num_items + 1], np.float64)
        p = p / p.sum()
    ranks = np.zeros(len(histories), np.int64)
    for start in range(0, len(histories), batch_size):
        idx = np.arange(start, min(start + batch_size, len(histories)))
        hist = [histories[i] for i in idx]
        seq = torch.as_tensor(pad_left([h[-max_len:] for h in hist]))
        scores = score_fn(seq)[:, : num_items + 1].float()
        for row, i in enumerate(idx):
            seen = set(histories[i].tolist()) | {int(targets[i])}
            negs: list[int] = []
            while len(negs) < num_negatives:
                cand = rng.choice(num_items, size=num_negatives * 2, p=p) + 1
                negs.extend(c for c in cand.tolist() if c not in seen)
            neg = torch.as_tensor(negs[:num_negatives])
            ranks[i] = int((scores[row, neg] > scores[row, int(targets[i])]).sum())
    kind = "pop" if popularity is not None else "uni"
    return metrics_from_ranks(ranks, ks, prefix=f"sampled{num_negatives}_{kind}_")


def popularity_scores(train: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """(N+1,) training interaction counts; index 0 (padding) stays 0."""
    counts = np.bincount(np.concatenate(train), minlength=num_items + 1).astype(np.float32)
    counts[0] = 0.0
    return counts


def popularity_score_fn(pop: np.ndarray) -> ScoreFn:
    table = torch.as_tensor(pop)

    def fn(seq: torch.Tensor) -> torch.Tensor:
        return table.expand(seq.shape[0], -1)

    return fn
