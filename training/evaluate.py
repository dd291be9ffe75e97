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
) -> dict[str, float] | tuple[dict[str, float], np.ndarray]:
    """Score every user's history, rank the held-out target against the full catalogue.

    `times` (parallel to `histories`) are the history events' unix seconds: `transform` maps
    each (items, times) to what the model reads, and with `pass_times` the padded times go to
    `score_fn(seq, time_seq)`. The items excluded from the ranking are always the original
    history's: a transform changes what the model reads, never what counts as seen.
    """
    n = len(histories)
    if (transform is not None or pass_times) and (times is None or len(times) != n):
        raise ValueError("this model reads event times: pass `times` parallel to the histories")
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
        else:
            seq = torch.as_tensor(pad_left([h[-max_len:] for h in hist]), device=device)
            scores = score_fn(seq)
        tgt = torch.as_tensor(targets[idx], device=device)
        r = target_ranks(scores, tgt, hist if exclude_history else None, num_items)
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
