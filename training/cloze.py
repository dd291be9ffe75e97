"""BERT4Rec's Cloze task (Sun et al. 2019, Sec. 3.6).

Each epoch, every training sequence (its newest `max_len` items, or with probability
1 - `newest_prob` a random earlier window of a longer history) gets a fresh random mask: each
item is replaced by `[mask]` with probability rho (at least one per sequence), and the model
predicts the original items at the masked positions with a full softmax over the catalogue.
On top of those, `last_item_ratio` x (number of sequences) extra samples mask only the last item,
which is exactly the inference input (history + [mask]); the paper adds them to close the gap
between Cloze training and next-item prediction. `prefix_ratio` (ours, off by default) adds
samples of the same kind cut at a random earlier point: history[:k] + [mask] -> item k, so the
inference task is practised at every point of a history, as SASRec's loss at every position is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.bert4rec import BERT4Rec
from training import losses
from training.batching import pad_left
from training.tasks import Batch, Task, batch_order, check_exclude_seen, draw_window, row_items


def cloze_mask(seq: np.ndarray, rho: float, mask_token: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> (input with [mask] tokens, labels: the original item where masked, else 0)."""
    masked = rng.random(len(seq)) < rho
    if not masked.any():
        masked[rng.integers(len(seq))] = True  # every sample must teach something
    inp = np.where(masked, mask_token, seq)
    return inp, np.where(masked, seq, 0)


def has_proper_prefix(seq: np.ndarray) -> bool:
    """A prefix sample needs k in [2, len): one item of context, and not the whole history
    (that one is the last-item sample's)."""
    return len(seq) >= 3


def last_item_mask(seq: np.ndarray, mask_token: int) -> tuple[np.ndarray, np.ndarray]:
    inp, lab = seq.copy(), np.zeros_like(seq)
    inp[-1], lab[-1] = mask_token, seq[-1]
    return inp, lab


@dataclass
class ClozeTask(Task):
    max_len: int
    mask_token: int
    mask_prob: float = 0.2  # rho
    last_item_ratio: float = 0.1  # extra last-item-masked samples per training sequence
    prefix_ratio: float = 0.0  # extra samples per sequence: a random proper prefix, its last item masked
    # "ce": full softmax over the catalogue (the paper); "sampled": softmax over `num_negatives`
    # shared negatives, uniform or by `popularity` with logQ correction. On a large catalogue
    # (Beauty: 54k items) the full softmax is ~90% of an epoch on a CPU.
    loss_name: str = "ce"
    num_negatives: int = 4096
    popularity: torch.Tensor | None = None
    logq: str = "negatives"  # logQ form for popularity negatives (losses.sampled_softmax)
    bucket: bool = False  # length-bucketed batches (tasks.batch_order): less padding per batch
    # A history longer than max_len trains on its newest window with this probability, else on
    # a window ending at a uniformly drawn earlier point (the older third of ML-1M's
    # interactions is otherwise never seen; the original BERT4Rec code slides windows too).
    newest_prob: float = 1.0
    # ce only: the row's own items are not negatives at its masked positions (see NextItemTask).
    exclude_seen: bool = False

    def __post_init__(self) -> None:
        check_exclude_seen(self.exclude_seen, self.loss_name)
        for name in ("last_item_ratio", "prefix_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"bert4rec: train.{name} must be >= 0, got {getattr(self, name)}")

    def _samples(self, train: Sequence[np.ndarray], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        usable = [s for s in train if len(s) >= 1]
        out = [
            cloze_mask(draw_window(s, self.max_len, self.newest_prob, rng), self.mask_prob, self.mask_token, rng)
            for s in usable
        ]
        seqs = [s[-self.max_len :] for s in usable]  # last-item samples: always the newest window
        n_last = round(self.last_item_ratio * len(seqs))
        if n_last and seqs:
            pick = rng.choice(len(seqs), size=n_last, replace=n_last > len(seqs))
            # The inference input is history[-(max_len-1):] + [mask]: build the same shape.
            out += [last_item_mask(seqs[i], self.mask_token) for i in pick]
        # Prefixes of the whole history, so a long one also practises on its older part.
        cuttable = [s for s in usable if has_proper_prefix(s)]
        n_prefix = round(self.prefix_ratio * len(seqs))
        if n_prefix and cuttable:
            pick = rng.choice(len(cuttable), size=n_prefix, replace=n_prefix > len(cuttable))
            for i in pick:
                k = rng.integers(2, len(cuttable[i]))
                out.append(last_item_mask(cuttable[i][:k][-self.max_len :], self.mask_token))
        return out

    def num_batches(self, train: Sequence[np.ndarray], batch_size: int) -> int:
        n = len(train) + round(self.last_item_ratio * len(train))
        if any(has_proper_prefix(s) for s in train):
            n += round(self.prefix_ratio * len(train))
        return (n + batch_size - 1) // batch_size

    def batches(
        self, train: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator, device: torch.device
    ) -> Iterator[Batch]:
        samples = self._samples(train, rng)
        lengths = np.array([len(inp) for inp, _ in samples])
        for idx in batch_order(lengths, batch_size, rng, self.bucket):
            chunk = [samples[i] for i in idx]
            yield {
                "item_seq": torch.as_tensor(pad_left([c[0] for c in chunk]), device=device),
                "labels": torch.as_tensor(pad_left([c[1] for c in chunk]), device=device),
            }

    def loss(self, model: BERT4Rec, batch: Batch) -> torch.Tensor:  # type: ignore[override]
        h = model.encode(batch["item_seq"])  # (B, L, D)
        labels = batch["labels"]
        at = labels != 0  # (B, L): masked positions only
        if self.loss_name == "sampled":
            # E and b^O apart: the loss gathers a few thousand rows, so [E | b^O] for all 54k
            # Beauty items (and its backward) would be a wasted copy every step.
            table, bias = model.item_emb.weight[: model.num_items + 1], model.out_bias  # (N+1, D), (N+1,)
            return losses.sampled_softmax(
                model.project(h[at]), labels[at], table, self.num_negatives, self.popularity, self.logq, bias=bias
            )
        if self.loss_name != "ce":
            raise ValueError(f"bert4rec: unknown loss {self.loss_name!r}: choose ce or sampled")
        table = model.item_vectors()  # (N+1, D+1): eq. 7 logits are head(h) @ table.T
        if not self.exclude_seen:
            return losses.full_softmax_ce(model.head(h[at]), labels[at], table)
        # width mask_token + 1: item_seq holds [mask]; its column is cut off
        seen = row_items(self.mask_token + 1, batch["item_seq"], labels)[:, : table.shape[0]]  # (B, N+1)
        rows = at.nonzero(as_tuple=True)[0]
        return losses.full_softmax_ce(model.head(h[at]), labels[at], table, exclude=seen, rows=rows)
