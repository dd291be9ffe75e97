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

Two task options use the types further (NextItemConfig):

- `task.type_input = true`: the model reads each input event's type (SASRec's type embedding;
  model.num_types is set to the number of the data's types). Type ids are the type's position in
  the data's type names plus 1, 0 for padding: the ids a bundle's model.onnx gets from the service.
- `task.type_weights = {view = 0.3}`: each training target's loss weighed by its type, sum(w * loss)
  / sum(w). A target type weighs 1 unless named, an input-only type 0 unless named: a weight above 0
  makes it a training target too (the next view is learned beside the next like), while validation
  and test stay on the target types (each user's last likes).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.batching import pad_left
from training.config import ConfigError
from training.data.preprocess import SeqData, Split, check_eval_queries
from training.data.readers import DatasetError
from training.evaluate import metrics_from_ranks, target_ranks
from training.tasks import reads_types


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


def type_weight_table(roles: TypeRoles, weights: Any) -> np.ndarray | None:
    """task.type_weights ({type: weight}) as (len(names) + 1,) float32 by type id (0 pads), or None.

    Each event type's loss weight as a training target: a target type weighs 1 unless named, an
    input-only type 0 unless named (a weight above 0 makes it a training target too, while the
    held-out queries stay on the target types). An unknown or negative type, a weight that is not
    a finite number >= 0, or every type at weight 0 is refused, naming it."""
    if weights is None:
        return None
    if not isinstance(weights, dict):
        raise ConfigError(f"task.type_weights: expected a table of type = weight, e.g. {{view = 0.3}}, got {weights!r}")
    unknown = [t for t in weights if t not in roles.names]
    if unknown:
        raise ConfigError(
            f"task.type_weights: unknown event type(s) {', '.join(map(str, unknown))}; "
            f"the data's types: {', '.join(roles.names)}"
        )
    negative = [t for t in weights if t in roles.negative]
    if negative:
        raise ConfigError(
            f"task.type_weights: {', '.join(negative)} negative (never input nor target): it has no loss to weigh"
        )
    table = np.zeros(len(roles.names) + 1, np.float32)
    for n, t in enumerate(roles.names):
        if t in roles.negative:
            continue
        w = weights.get(t, 1.0 if t in roles.target else 0.0)
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w < 0:
            raise ConfigError(f"task.type_weights.{t}: expected a number >= 0, got {w!r}")
        table[n + 1] = w
    if not table.any():
        raise ConfigError("task.type_weights: every type weighs 0; nothing is left to learn")
    return table


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


def typed_leave_one_out(
    data: SeqData, roles: TypeRoles, use_types: bool = True, weights: np.ndarray | None = None
) -> TypedSplit:
    """See the module docstring. A user with fewer than two target events, or no input before
    the second-to-last, is training data only. Typed, the split also holds each history's type
    ids (train_types, valid_types, test_types); with `weights` (type_weight_table), the training
    targets are the events whose type weighs more than 0, and each one's weight (train_weights)."""
    assert data.types is not None
    neg_codes, tgt_codes = roles.codes(roles.negative), roles.codes(roles.target)
    timed = data.timestamps is not None
    train, masks, vh, vt, th, tt, vn, tn = [], [], [], [], [], [], [], []
    train_t: list[np.ndarray] = []
    valid_t: list[np.ndarray] = []
    test_t: list[np.ndarray] = []
    train_y: list[np.ndarray] = []
    valid_y: list[np.ndarray] = []
    test_y: list[np.ndarray] = []
    train_w: list[np.ndarray] = []
    for u in range(data.num_users):
        a, b = data.offsets[u], data.offsets[u + 1]
        s, ty = data.items[a:b].astype(np.int64), data.types[a:b]
        y = ty.astype(np.int64) + 1  # (n,) type ids as the model reads them
        ts = data.timestamps[a:b] if data.timestamps is not None else np.zeros(b - a, np.int64)
        negative, target = np.isin(ty, neg_codes), np.isin(ty, tgt_codes)
        # Untyped: every event is input and target, as if the log had no types. With weights, the
        # training targets are the events of a type that weighs more than 0 (views may join likes).
        inp = ~negative if use_types else np.ones(len(s), bool)
        learned = target if weights is None else weights[y] > 0
        is_target = learned if use_types else np.ones(len(s), bool)
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
            train_y.append(y[:end][keep])
            if weights is not None:
                train_w.append(weights[train_y[-1]])  # 0 where not a training target
        if not query:
            continue
        pv, pt = pos[-2], pos[-1]
        vh.append(seq)
        vt.append(s[pv])
        th.append(s[:pt][inp[:pt]])
        tt.append(s[pt])
        valid_t.append(ts[:pv][inp[:pv]])
        test_t.append(ts[:pt][inp[:pt]])
        valid_y.append(y[:pv][inp[:pv]])
        test_y.append(y[:pt][inp[:pt]])
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
        train_types=train_y if use_types else None,
        valid_types=valid_y if use_types else None,
        test_types=test_y if use_types else None,
        train_weights=train_w if use_types and weights is not None else None,
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
    types: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Full ranking of each target with the history and the negative items left out (as served),
    beside the ranking that leaves out the history only, and how often a negative item (one the
    user disliked) reaches the top k there. `types` (each history's type ids) go to a model that
    reads them."""
    model.eval()
    if reads_types(model) and (types is None or len(types) != len(hists)):
        raise ValueError("this model reads event types: pass `types` parallel to the histories")
    ranks = np.zeros(len(hists), np.int64)
    ranks_hist = np.zeros(len(hists), np.int64)
    in_top, in_top_excluded, items_in_top = 0, 0, 0
    for start in range(0, len(hists), batch_size):
        idx = np.arange(start, min(start + batch_size, len(hists)))
        hist = [hists[i] for i in idx]
        both = [np.concatenate([hists[i], negative[i]]) for i in idx]
        seq = torch.as_tensor(pad_left([h[-model.max_len :] for h in hist]), device=device)
        extra = ()
        if reads_types(model):
            assert types is not None
            extra = (torch.as_tensor(pad_left([types[i][-model.max_len :] for i in idx]), device=device),)
        scores = model.score(seq, *extra)[:, : num_items + 1].float()
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


def type_input_model(
    model_name: str, roles: TypeRoles, type_input: bool, model_overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """The model options with model.num_types = the data's number of types when task.type_input
    (every type gets a row, the negative ones too: the names a bundle lists are the data's)."""
    from training.zoo import get_spec

    over = dict(model_overrides or {})
    given = over.get("num_types")
    takes = "num_types" in {f.name for f in fields(get_spec(model_name).config_cls)}
    if type_input and not takes:
        raise ConfigError(f"task.type_input: {model_name} does not read event types (sasrec does)")
    if given and not type_input:
        raise ConfigError("model.num_types is set from the data by task.type_input = true: set that instead")
    if type_input:
        if given is not None and given != len(roles.names):
            raise ConfigError(
                f"model.num_types = {given}, but the data has {len(roles.names)} event types "
                f"({', '.join(roles.names)}); leave it out, task.type_input sets it"
            )
        over["num_types"] = len(roles.names)
    return over


def weighs_targets(task: Any) -> bool:
    """Whether the task's loss reads the batches' target weights (NextItemTask's own loss)."""
    from training.tasks import NextItemTask

    return isinstance(task, NextItemTask) and type(task).loss is NextItemTask.loss


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
    type_input = bool(getattr(task_cfg, "type_input", False))
    given_weights = getattr(task_cfg, "type_weights", None)
    weights = type_weight_table(roles, given_weights)
    if not use_types and (type_input or weights is not None):
        raise ConfigError("task.type_input and task.type_weights read the types: not with --untyped")
    model_overrides = type_input_model(model_name, roles, type_input, model_overrides)
    if use_types:
        probe = build_model(model_name, 2, model_overrides)
        task = get_spec(model_name).make_task(probe.cfg, tc, task_cfg, np.ones(3))
        check_task_takes_targets(model_name, task)
        if weights is not None and not weighs_targets(task):
            raise ConfigError(f"task.type_weights: {model_name}'s loss does not weigh its targets")
    ts = typed_leave_one_out(data, roles, use_types, weights)
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
    test_types = ts.split.test_types[:n] if ts.split.test_types is not None else None
    test = evaluate_typed(
        model,
        ts.split.test_hist[:n],
        ts.split.test_target[:n],
        ts.test_negative[:n],
        data.num_items,
        device=device,
        types=test_types,
    )
    out = {
        "typed": use_types,
        "type_input": type_input,
        "type_weights": None
        if weights is None
        else {t: float(given_weights.get(t, float(t in roles.target))) for t in roles.names if t not in roles.negative},
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
