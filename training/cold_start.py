"""Time-based cold-start evaluation: items nobody interacted with during training.

Protocol: order items by their first interaction; the newest `frac` of them are "cold".
Every interaction with a cold item is removed from the training data (the catalogue,
i.e. the item index space and item text, stays whole). Evaluated: the leave-one-out
test users whose target (last item) is cold; history = everything before it (cold items
in it included: a text model can read them, an id model cannot); full ranking over the
whole catalogue, history items excluded.

Model selection (early stopping) uses the same protocol one step earlier: the users whose
second-to-last item is cold, predicting it from what came before (`cold_validation_split`);
the test targets are never looked at.

Baselines: popularity (training counts: cold items score 0, so it never finds them) and
text nearest neighbour (cosine of the last history item's text embedding to every item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.data.preprocess import SeqData, Split
from training.data.readers import DatasetError
from training.evaluate import ScoreFn, full_rank_eval, popularity_score_fn, popularity_scores


@dataclass
class ColdStartSplit:
    train_data: SeqData  # same item_ids; every cold-item interaction removed
    cold_items: np.ndarray  # (C,) item indices (1-based)
    hists: list[np.ndarray]  # evaluated users' histories (full, cold items included)
    targets: np.ndarray  # (E,) their cold target items
    user_ids: list[str]
    valid_hists: list[np.ndarray]  # users whose second-to-last item is cold: history before it
    valid_targets: np.ndarray  # (V,) that cold item


def cold_start_split(data: SeqData, frac: float = 0.1) -> ColdStartSplit:
    if data.timestamps is None:
        raise DatasetError(f"{data.name}: the time-based cold-start split needs timestamps")
    if not 0 < frac < 1:
        raise ValueError("frac must be in (0, 1)")
    first = np.full(data.num_items + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, data.items.astype(np.int64), data.timestamps)
    # Newest first interaction last; equal days broken by index so the split is deterministic.
    order = np.lexsort((np.arange(1, data.num_items + 1), first[1:])) + 1
    n_cold = max(1, round(frac * data.num_items))
    cold = np.sort(order[-n_cold:])
    is_cold = np.zeros(data.num_items + 1, bool)
    is_cold[cold] = True

    seqs, times, users = [], [], []
    hists, targets, eval_users = [], [], []
    v_hists, v_targets = [], []
    for u in range(data.num_users):
        s, t = data.sequence(u), data.times(u)
        assert t is not None
        if len(s) >= 2 and is_cold[s[-1]]:
            hists.append(s[:-1])
            targets.append(int(s[-1]))
            eval_users.append(data.user_ids[u])
        if len(s) >= 3 and is_cold[s[-2]]:
            v_hists.append(s[:-2])
            v_targets.append(int(s[-2]))
        keep = ~is_cold[s]
        if keep.sum() >= 1:
            seqs.append(s[keep])
            times.append(t[keep])
            users.append(data.user_ids[u])
    offsets = np.zeros(len(seqs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    train = SeqData(
        name=f"{data.name}-coldstart{round(frac * 100)}",
        user_ids=users,
        item_ids=data.item_ids,
        offsets=offsets,
        items=np.concatenate(seqs).astype(np.int32),
        timestamps=np.concatenate(times),
    )
    return ColdStartSplit(
        train, cold, hists, np.array(targets, np.int64), eval_users, v_hists, np.array(v_targets, np.int64)
    )


def cold_validation_split(split: ColdStartSplit) -> Split:
    """Training sequences of the cold-start data (leave-one-out train part, no cold item), with
    the cold validation users as `valid` (early stopping) and the cold test users as `test`."""
    from training.data.preprocess import leave_one_out

    return Split(
        train=leave_one_out(split.train_data).train,
        valid_hist=split.valid_hists,
        valid_target=split.valid_targets,
        test_hist=split.hists,
        test_target=split.targets,
        num_items=split.train_data.num_items,
    )


def text_knn_score_fn(text_emb: np.ndarray) -> ScoreFn:
    """Cosine of the last history item's text embedding to every item. text_emb: (N+1, d)."""
    t = torch.as_tensor(text_emb, dtype=torch.float32)
    t = t / t.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def fn(seq: torch.Tensor) -> torch.Tensor:
        return t[seq[:, -1]] @ t.T  # (B, N+1); sequences are left-padded, newest last

    return fn


def evaluate_cold_start(
    split: ColdStartSplit,
    score_fns: dict[str, ScoreFn],
    max_len: int,
    num_items: int,
    text_emb: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics over the cold-target users for each model plus the baselines."""
    from training.data.preprocess import leave_one_out

    fns = dict(score_fns)
    train_seqs = leave_one_out(split.train_data).train
    fns["popularity"] = popularity_score_fn(popularity_scores(train_seqs, num_items))
    if text_emb is not None:
        fns["text_knn"] = text_knn_score_fn(text_emb)
    out: dict[str, dict[str, float]] = {}
    for name, fn in fns.items():
        out[name] = full_rank_eval(fn, split.hists, split.targets, num_items, max_len)  # type: ignore[assignment]
    return out
