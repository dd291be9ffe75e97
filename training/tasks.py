"""Per-model training tasks: how a user's training sequence becomes a batch, and its loss.

A task sees only the training part of each sequence (leave-one-out: seq[:-2]), so the
validation and test items can never leak into training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.layers import SeqRecModel
from training import losses
from training.batching import pad_left
from training.config import ConfigError

if TYPE_CHECKING:
    from training.data.preprocess import Split

Batch = dict[str, torch.Tensor]


def batch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: bool) -> list[np.ndarray]:
    """Row indices of each batch, for one epoch.

    bucket=False: a plain shuffle. bucket=True: shuffle, then sort by length inside chunks of
    50 batches and shuffle the batches: rows of a batch have similar lengths, so a batch pads
    to far fewer than max_len steps (ML-1M: ~1.6x less work per epoch) while each batch is
    still a random draw from its length range.
    """
    order = rng.permutation(len(lengths))
    if bucket:
        chunk = 50 * batch_size
        order = np.concatenate(
            [c[np.argsort(lengths[c], kind="stable")] for c in np.split(order, range(chunk, len(order), chunk))]
        )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def window_bounds(n: int, span: int, newest_prob: float, rng: np.random.Generator) -> slice:
    """At most `span` consecutive positions of a length-n sequence: the newest ones with probability
    `newest_prob`, else (when it is longer) a window ending at a uniformly drawn earlier point."""
    end = n
    if end > span and newest_prob < 1.0 and rng.random() >= newest_prob:
        end = int(rng.integers(span, end + 1))
    return slice(max(0, end - span), end)


def draw_window(s: np.ndarray, span: int, newest_prob: float, rng: np.random.Generator) -> np.ndarray:
    """`s` cut by window_bounds."""
    return s[window_bounds(len(s), span, newest_prob, rng)]


def shifted_batches(
    train: Sequence[np.ndarray],
    batch_size: int,
    rng: np.random.Generator,
    device: torch.device,
    max_len: int,
    bucket: bool = False,
    newest_prob: float = 1.0,
    times: Sequence[np.ndarray] | None = None,
    target_masks: Sequence[np.ndarray] | None = None,
    types: Sequence[np.ndarray] | None = None,
    target_weights: Sequence[np.ndarray] | None = None,
) -> Iterator[Batch]:
    """One row per user, shuffled: input seq[:-1] and target seq[1:], max_len steps, left-padded.

    A sequence longer than max_len + 1 is cut to its newest window with probability
    `newest_prob`, else to a window ending at a uniformly drawn earlier point: without that,
    the older history of long users (a third of ML-1M's interactions) is never trained on.
    With `times` (parallel to `train`), the batch also has `time_seq`: the input events' times,
    left-padded with 0 like item_seq (the targets' times are not in it). With `target_masks`
    (bool, parallel to `train`), a position whose mask is False is input only: its target is 0,
    which the loss skips (event types: training/event_types.py). With `types` (int type ids,
    parallel to `train`), the batch has `type_seq`: the input events' type ids, 0 where items
    pad; with `target_weights` (float, parallel to `train`), `target_weight`: each target's loss
    weight, 0 where targets pad. Neither draws from `rng`: the rows are the same with or without.
    """
    keep = [u for u, s in enumerate(train) if len(s) >= 2]
    lengths = np.array([min(len(train[u]), max_len + 1) for u in keep])
    for idx in batch_order(lengths, batch_size, rng, bucket):
        users = [keep[i] for i in idx]
        cuts = [window_bounds(len(train[u]), max_len + 1, newest_prob, rng) for u in users]
        rows = [train[u][c] for u, c in zip(users, cuts, strict=True)]
        batch = {
            "item_seq": torch.as_tensor(pad_left([r[:-1] for r in rows]), device=device),  # (B, L)
            "target": torch.as_tensor(pad_left([r[1:] for r in rows]), device=device),  # (B, L)
        }
        if target_masks is not None:
            keep_t = [np.asarray(target_masks[u])[c][1:] for u, c in zip(users, cuts, strict=True)]
            batch["target"] *= torch.as_tensor(pad_left(keep_t), device=device)
        if times is not None:
            t_rows = [np.asarray(times[u], np.int64)[c][:-1] for u, c in zip(users, cuts, strict=True)]
            batch["time_seq"] = torch.as_tensor(pad_left(t_rows), device=device)  # (B, L) unix seconds
        if types is not None:
            y_rows = [np.asarray(types[u], np.int64)[c][:-1] for u, c in zip(users, cuts, strict=True)]
            batch["type_seq"] = torch.as_tensor(pad_left(y_rows), device=device)  # (B, L) type ids
        if target_weights is not None:
            w = np.zeros(batch["target"].shape, np.float32)  # (B, L), left-padded with 0 like target
            for row, u, c in zip(w, users, cuts, strict=True):
                wu = np.asarray(target_weights[u], np.float32)[c][1:]
                row[len(row) - len(wu) :] = wu
            batch["target_weight"] = torch.as_tensor(w, device=device)
        yield batch


def reads_types(model: Any) -> bool:
    """Whether a model reads each event's type (SASRec with model.num_types > 0)."""
    return bool(getattr(model, "reads_types", False))


def type_batch_kwargs(model: Any, task_cfg: Any, split: Split, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """The training batches' keywords for the types (the rank's share): `types` when the model
    reads them, `target_weights` with task.type_weights. A run that asks for types on a split
    without them is refused."""
    asked = reads_types(model) or getattr(task_cfg, "type_input", False) or getattr(task_cfg, "type_weights", None)
    if asked and split.train_types is None:
        raise ConfigError(
            "task.type_input, task.type_weights and model.num_types need typed data: prepare it with "
            "--type-col (and train it without --untyped)"
        )
    out: dict[str, Any] = {}
    if reads_types(model):
        out["types"] = split.train_types[rank::world]  # type: ignore[index]
    if split.train_weights is not None:
        out["target_weights"] = split.train_weights[rank::world]
    return out


def row_items(num_rows: int, *parts: torch.Tensor) -> torch.Tensor:
    """(B, num_rows) bool: the items in each row of the (B, L) id tensors `parts` (column 0 = padding)."""
    seen = torch.zeros(parts[0].shape[0], num_rows, dtype=torch.bool, device=parts[0].device)
    for ids in parts:
        seen.scatter_(1, ids, True)
    return seen


def check_exclude_seen(exclude_seen: bool, loss_name: str) -> None:
    """exclude_seen masks the full softmax; fail loudly rather than ignore it with another loss."""
    if exclude_seen and loss_name != "ce":
        raise ValueError(f"task.exclude_seen works with loss ce only, not {loss_name!r}")


class Task:
    """Base: subclasses define `batches` and `loss`.

    The task of a run that reads event times (training.zoo.reads_times) also takes
    `batches(..., times=...)`: int64 unix seconds parallel to `train`, row by row.
    """

    def batches(
        self, train: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator, device: torch.device
    ) -> Iterator[Batch]:
        raise NotImplementedError

    def num_batches(self, train: Sequence[np.ndarray], batch_size: int) -> int:
        return (len(train) + batch_size - 1) // batch_size

    def loss(self, model: SeqRecModel, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class NextItemTask(Task):
    """Next item at every position (SASRec): input seq[:-1], target seq[1:], one row per user.

    loss: "ce" full softmax (default), "bce" with `num_negatives` uniform negatives per
    position (the SASRec paper), "sampled" softmax over `num_negatives` shared negatives.
    """

    max_len: int
    loss_name: str = "ce"
    num_negatives: int = 1
    popularity: torch.Tensor | None = None  # for popularity-sampled negatives (with logQ correction)
    bucket: bool = False  # length-bucketed batches (see batch_order)
    newest_prob: float = 1.0  # see shifted_batches
    logq: str = "negatives"  # see losses.sampled_softmax
    # ce only: the row's own items (input and targets) are not negatives, as when negatives
    # are drawn from the items a user has not touched (Klenitskiy & Vasilev's 3000-negative run).
    exclude_seen: bool = False
    # sampled only: (N+1,) training target counts; the batch's targets join the negatives (losses.sampled_softmax)
    in_batch: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_exclude_seen(self.exclude_seen, self.loss_name)
        if self.in_batch is not None and self.loss_name != "sampled":
            raise ValueError(f"task.in_batch works with the sampled softmax only, not {self.loss_name!r}")

    def batches(
        self,
        train: Sequence[np.ndarray],
        batch_size: int,
        rng: np.random.Generator,
        device: torch.device,
        times: Sequence[np.ndarray] | None = None,
        target_masks: Sequence[np.ndarray] | None = None,
        types: Sequence[np.ndarray] | None = None,
        target_weights: Sequence[np.ndarray] | None = None,
    ) -> Iterator[Batch]:
        yield from shifted_batches(
            train,
            batch_size,
            rng,
            device,
            self.max_len,
            self.bucket,
            self.newest_prob,
            times,
            target_masks,
            types,
            target_weights,
        )

    def loss(self, model: SeqRecModel, batch: Batch) -> torch.Tensor:
        extra = (batch["time_seq"],) if "time_seq" in batch else ()  # a model that reads times (TiSASRec)
        typed = {"type_seq": batch["type_seq"]} if "type_seq" in batch else {}  # a model that reads types
        h = model.hidden(batch["item_seq"], *extra, **typed)  # (B, L, D)
        mask = batch["target"] != 0  # (B, L)
        h, pos = h[mask], batch["target"][mask]  # (T, D), (T,)
        table = model.item_vectors()  # (N+1, D)
        seen = None
        if self.loss_name == "ce" and self.exclude_seen:
            seen = row_items(table.shape[0], batch["item_seq"], batch["target"])  # (B, N+1)
        rows = None if seen is None else mask.nonzero(as_tuple=True)[0]  # (T,) the batch row of each position
        if "target_weight" not in batch:
            return self.position_loss(h, pos, table, seen, rows)
        return weighted_loss(self.position_loss, h, pos, table, seen, rows, batch["target_weight"][mask])

    def position_loss(
        self,
        h: torch.Tensor,
        pos: torch.Tensor,
        table: torch.Tensor,
        seen: torch.Tensor | None,
        rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """The loss averaged over positions h (T, D) with targets pos (T,); seen (B, N+1) and rows (T,),
        each position's batch row: the items that are not negatives (exclude_seen)."""
        if self.loss_name == "ce":
            if seen is None:
                return losses.full_softmax_ce(h, pos, table)
            return losses.full_softmax_ce(h, pos, table, exclude=seen, rows=rows)
        if self.loss_name == "bce":
            return losses.bce_negatives(h, pos, table, self.num_negatives)
        if self.loss_name == "sampled":
            return losses.sampled_softmax(
                h, pos, table, self.num_negatives, self.popularity, self.logq, in_batch=self.in_batch
            )
        raise ValueError(f"unknown loss {self.loss_name!r}: choose ce, bce or sampled")


def weighted_loss(
    position_loss: Callable[..., torch.Tensor],
    h: torch.Tensor,
    pos: torch.Tensor,
    table: torch.Tensor,
    seen: torch.Tensor | None,
    rows: torch.Tensor | None,
    weight: torch.Tensor,
) -> torch.Tensor:
    """sum_t w_t l_t / sum_t w_t: each position's loss weighed by its target's weight (T,) (task.type_weights).

    The losses average over the positions they get, so positions of one weight go in together and
    the group means are combined by weight x count: exact for ce and bce, one draw of negatives per
    group for the sampled softmax. A batch whose weights are all 0 has loss 0 (still on the graph).
    """
    total, norm = h.sum() * 0.0, weight.new_zeros(())
    for g in torch.unique(weight).tolist():
        if g == 0.0:
            continue
        sel = weight == g  # (T,)
        n = sel.sum()
        total = total + g * n * position_loss(h[sel], pos[sel], table, seen, None if rows is None else rows[sel])
        norm = norm + g * n
    return total / norm.clamp(min=1e-12)


@dataclass
class ContrastiveNextItemTask(NextItemTask):
    """UniSRec fine-tuning: next item at every position, softmax over the whole catalogue of
    cosine scores divided by a temperature (Hou et al. 2022, Eq. 7/8): the model's hidden
    states and item vectors are already unit length."""

    temperature: float = 0.07
    # (N+1,) bool: items that may be negatives. Items with no training interaction are left
    # out: at training time they do not exist yet (cold start), and a text model must not
    # learn to push "new-looking" text down.
    candidates: torch.Tensor | None = None

    def loss(self, model: SeqRecModel, batch: Batch) -> torch.Tensor:
        h, table = model.hidden_and_table(batch["item_seq"])  # (B, L, D), (N+1, D): unit rows
        mask = batch["target"] != 0  # (B, L)
        h, pos = h[mask], batch["target"][mask]  # (T, D), (T,)
        logits = h @ table.T / self.temperature  # (T, N+1)
        if self.candidates is not None:
            logits = logits.masked_fill(~self.candidates.to(logits.device), float("-inf"))
        logits[:, 0] = float("-inf")
        return torch.nn.functional.cross_entropy(logits.float(), pos)
