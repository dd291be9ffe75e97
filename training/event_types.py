"""Event types in training: what a model reads, what it learns to predict, how it is judged.

A typed dataset (`seqrec prepare --type-col`, SeqData.types) gives every event a type. Three
roles follow from the declaration (data meta "event_types", overridable per run):

- negative types (e.g. dislike): never input, never a target; the items are only remembered,
  so evaluation can leave them out of the ranked list as the service never recommends them again;
- target types (e.g. like): the events training predicts and evaluation holds out; empty means
  every type that is not negative;
- every other type (e.g. view) is input only.

The split is leave-one-out on target-type events: a user's last target event is the test
target, the one before it the validation target. The history of a query is every non-negative
event before its target (views between two likes included), so no event after the target
leaks in. `use_types=False` gives the untyped baseline on the very same queries: every event,
negative or not, is input and target, as when types are ignored.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.batching import pad_left
from training.data.preprocess import SeqData, Split, check_eval_queries
from training.data.readers import DatasetError
from training.evaluate import metrics_from_ranks, target_ranks


@dataclass(frozen=True)
class TypeRoles:
    """The event types of a dataset and the role of each."""

    names: tuple[str, ...]
    negative: tuple[str, ...]
    target: tuple[str, ...]

    def codes(self, which: tuple[str, ...]) -> np.ndarray:
        return np.array([self.names.index(t) for t in which], np.int8)

    def to_dict(self) -> dict[str, list[str]]:
        return {"names": list(self.names), "negative": list(self.negative), "target": list(self.target)}


def type_roles(
    data: SeqData, negative_types: list[str] | None = None, target_types: list[str] | None = None
) -> TypeRoles:
    """Roles from the data's declaration, each list replaced when given; unknown names refused."""
    if data.types is None or data.type_names is None:
        raise DatasetError(
            f"{data.name}: the events have no types; prepare the data with --type-col COLUMN "
            f"(and --negative-types / --target-types)"
        )
    declared = data.meta.get("event_types") or {}
    names = tuple(data.type_names)
    negative = tuple(negative_types if negative_types is not None else declared.get("negative", []))
    target = tuple(target_types if target_types is not None else declared.get("target", []))
    unknown = [t for t in (*negative, *target) if t not in names]
    if unknown:
        raise DatasetError(f"{data.name}: unknown event type(s) {', '.join(unknown)}; its types: {', '.join(names)}")
    if set(negative) & set(target):
        raise DatasetError(f"event type(s) {', '.join(sorted(set(negative) & set(target)))} are negative and target")
    target = target or tuple(t for t in names if t not in negative)
    if not target:
        raise DatasetError(f"{data.name}: every event type is negative; nothing is left to predict")
    return TypeRoles(names, negative, target)


def type_summary(data: SeqData) -> str | None:
    """One line for prepare's report: each type's event count and share, and its declared role."""
    if data.types is None or data.type_names is None:
        return None
    declared = data.meta.get("event_types") or {}
    counts = np.bincount(data.types, minlength=len(data.type_names))
    total = max(int(counts.sum()), 1)
    parts = []
    for name, n in zip(data.type_names, counts.tolist(), strict=True):
        role = (
            " negative"
            if name in declared.get("negative", [])
            else " target"
            if name in declared.get("target", [])
            else ""
        )
        parts.append(f"{name} {n:,} ({100 * n / total:.0f}%{role})")
    return "event types: " + ", ".join(parts)


@dataclass
class TypedSplit:
    """A leave-one-out split on target-type events, plus each query's negative items."""

    split: Split  # train_targets set when typed
    valid_negative: list[np.ndarray]  # items of negative events before each validation target
    test_negative: list[np.ndarray]  # the same for each test target
    roles: TypeRoles
    typed: bool


def typed_leave_one_out(data: SeqData, roles: TypeRoles, use_types: bool = True) -> TypedSplit:
    """See the module docstring. A user with fewer than two target events, or no input before
    the second-to-last, is training data only."""
    assert data.types is not None
    neg_codes, tgt_codes = roles.codes(roles.negative), roles.codes(roles.target)
    timed = data.timestamps is not None
    train, masks, vh, vt, th, tt, vn, tn = [], [], [], [], [], [], [], []
    train_t: list[np.ndarray] = []
    valid_t: list[np.ndarray] = []
    test_t: list[np.ndarray] = []
    for u in range(data.num_users):
        a, b = data.offsets[u], data.offsets[u + 1]
        s, ty = data.items[a:b].astype(np.int64), data.types[a:b]
        ts = data.timestamps[a:b] if data.timestamps is not None else np.zeros(b - a, np.int64)
        negative, target = np.isin(ty, neg_codes), np.isin(ty, tgt_codes)
        # Untyped: every event is input and target, as if the log had no types.
        inp = ~negative if use_types else np.ones(len(s), bool)
        is_target = target if use_types else np.ones(len(s), bool)
        pos = np.flatnonzero(target)
        # The same queries typed or not: a non-negative event must come before the validation target.
        query = len(pos) >= 2 and (~negative[: pos[-2]]).any()
        end = pos[-2] if query else len(s)
        keep = inp[:end]
        seq, mask = s[:end][keep], is_target[:end][keep]
        if len(seq) >= 2 and mask[1:].any():  # a row with no target after its first event teaches nothing
            train.append(seq)
            masks.append(mask)
            train_t.append(ts[:end][keep])
        if not query:
            continue
        pv, pt = pos[-2], pos[-1]
        vh.append(seq)
        vt.append(s[pv])
        th.append(s[:pt][inp[:pt]])
        tt.append(s[pt])
        valid_t.append(ts[:pv][inp[:pv]])
        test_t.append(ts[:pt][inp[:pt]])
        vn.append(s[:pv][negative[:pv]])
        tn.append(s[:pt][negative[:pt]])
    split = Split(
        train,
        vh,
        np.array(vt, np.int64),
        th,
        np.array(tt, np.int64),
        data.num_items,
        train_t if timed else None,
        valid_t if timed else None,
        test_t if timed else None,
        train_targets=masks if use_types else None,
    )
    return TypedSplit(split, vn, tn, roles, use_types)


@torch.no_grad()
def evaluate_typed(
    model: Any,
    hists: list[np.ndarray],
    targets: np.ndarray,
    negative: list[np.ndarray],
    num_items: int,
    k: int = 10,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Full ranking of each target with the history and the negative items left out (as served),
    beside the ranking that leaves out the history only, and how often a negative item (one the
    user disliked) reaches the top k there."""
    model.eval()
    ranks = np.zeros(len(hists), np.int64)
    ranks_hist = np.zeros(len(hists), np.int64)
    in_top, in_top_excluded, items_in_top = 0, 0, 0
    for start in range(0, len(hists), batch_size):
        idx = np.arange(start, min(start + batch_size, len(hists)))
        hist = [hists[i] for i in idx]
        both = [np.concatenate([hists[i], negative[i]]) for i in idx]
        seq = torch.as_tensor(pad_left([h[-model.max_len :] for h in hist]), device=device)
        scores = model.score(seq)[:, : num_items + 1].float()
        tgt = torch.as_tensor(targets[idx], device=device)
        ranks[idx] = target_ranks(scores, tgt, both, num_items).cpu().numpy()
        ranks_hist[idx] = target_ranks(scores, tgt, hist, num_items).cpu().numpy()
        for masked, counts_items in ((hist, True), (both, False)):
            top = _top_k(scores, masked, k)
            for row, i in enumerate(idx):
                hits = int(np.isin(top[row], negative[i]).sum())
                if counts_items:
                    in_top += hits > 0
                    items_in_top += hits
                else:
                    in_top_excluded += hits > 0
    n = len(hists)
    return {
        **{m: v for m, v in metrics_from_ranks(ranks, (k,)).items()},
        "queries": n,
        "history_only": metrics_from_ranks(ranks_hist, (k,)),
        f"queries_with_disliked_in_top{k}_history_only": in_top,
        f"share_with_disliked_in_top{k}_history_only": round(in_top / max(n, 1), 4),
        f"disliked_items_in_top{k}_history_only": items_in_top,
        f"queries_with_disliked_in_top{k}": in_top_excluded,
    }


def _top_k(scores: torch.Tensor, masked: list[np.ndarray], k: int) -> np.ndarray:
    """(B, k) item indices of the best scores, padding and the `masked` items of each row left out."""
    s = scores.clone()
    s[:, 0] = -torch.inf
    rows = np.concatenate([np.full(len(h), r) for r, h in enumerate(masked)])
    cols = np.concatenate(masked)
    if len(rows):
        s[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
    return s.topk(k, dim=1).indices.cpu().numpy()


def check_task_takes_targets(model_name: str, task: Any) -> None:
    """Typed training marks input-only positions: only next-item tasks read those marks."""
    if "target_masks" not in inspect.signature(task.batches).parameters:
        raise DatasetError(
            f"{model_name}: event types in training need a next-item model (sasrec, tisasrec, ...); "
            f"its task has no input-only positions"
        )


def train_with_types(
    model_name: str,
    data: SeqData,
    run_dir: Path,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    task_overrides: dict[str, Any] | None = None,
    negative_types: list[str] | None = None,
    target_types: list[str] | None = None,
    use_types: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train on the typed split (or, `use_types=False`, the untyped baseline on the same queries),
    then evaluate the best checkpoint's test queries with evaluate_typed. Writes typed.json into
    `run_dir` beside the loop's own files and returns its content."""
    from training.checkpoint import load_checkpoint
    from training.train import resolve_device, train
    from training.zoo import build_model, get_spec, resolve

    roles = type_roles(data, negative_types, target_types)
    _, tc, task_cfg = resolve(model_name, model_overrides, train_overrides, task_overrides)
    if use_types:
        probe = build_model(model_name, 2, model_overrides)
        check_task_takes_targets(model_name, get_spec(model_name).make_task(probe.cfg, tc, task_cfg, np.ones(3)))
    ts = typed_leave_one_out(data, roles, use_types)
    counts = check_eval_queries(ts.split, name=data.name)
    result = train(
        model_name,
        data,
        run_dir,
        model_overrides,
        train_overrides,
        progress=progress,
        split=ts.split,
        task_overrides=task_overrides,
    )
    device = resolve_device(tc.device)
    model, _ = load_checkpoint(run_dir / "best.pt", device)
    n = tc.max_users or len(ts.split.test_hist)  # the users train() kept
    test = evaluate_typed(
        model, ts.split.test_hist[:n], ts.split.test_target[:n], ts.test_negative[:n], data.num_items, device=device
    )
    out = {
        "typed": use_types,
        "event_types": roles.to_dict(),
        "split": counts,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 1),
        "valid_history_only": {k: result.valid[k] for k in ("ndcg@10", "hr@10") if k in result.valid},
        "test": test,
    }
    (run_dir / "typed.json").write_text(json.dumps(out, indent=2))
    return out
