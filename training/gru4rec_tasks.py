"""GRU4Rec training tasks: session-parallel mini-batches and padded next-item batches.

Both score each hidden state against the row's target and a shared set of negatives: the other
targets of the mini-batch plus `n_extra` items drawn with probability proportional to supp^alpha
(alpha = 0 uniform, 1 popularity), as in Hidasi & Karatzoglou 2018 (Sec. 3.1). `n_extra < 0`
uses the whole catalogue as negatives instead (no sampling).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.gru4rec import GRU4Rec
from training import losses
from training.dwell import dwell_batches
from training.ranking_losses import LOSSES, ranking_loss
from training.tasks import Batch, Task, row_items, shifted_batches


@dataclass
class _Negatives:
    loss_name: str = "ce"
    n_extra: int = 2048
    alpha: float = 0.5
    bpreg: float = 1.0
    final_act: str = "linear"
    popularity: torch.Tensor | None = None  # (N+1,) training support of each item (index 0 = 0)
    _weights: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.loss_name not in LOSSES:
            raise ValueError(f"gru4rec: unknown loss {self.loss_name!r}; choose one of {', '.join(LOSSES)}")

    def sample(self, device: torch.device) -> torch.Tensor:
        """(K,) extra negatives ~ supp^alpha, shared by the whole mini-batch."""
        if self._weights is None or self._weights.device != device:
            if self.popularity is None:
                raise ValueError("gru4rec: extra negatives need item supports (popularity)")
            w = self.popularity.to(device).float().clamp_min(0) ** self.alpha
            w[0] = 0.0  # padding is never sampled (0 ** 0 would be 1)
            self._weights = w
        return torch.multinomial(self._weights, self.n_extra, replacement=True)

    def score_loss(
        self, model: GRU4Rec, h: torch.Tensor, target: torch.Tensor, in_batch: torch.Tensor | None
    ) -> torch.Tensor:
        """h: (T, H) hidden states, target: (T,), in_batch: (B,) the mini-batch's targets or None."""
        u = model.user_vector(h)  # (T, H[+1])
        table = model.item_vectors()  # (N+1, H[+1])
        if self.n_extra < 0 and self.loss_name == "ce" and self.final_act == "linear":
            # The same softmax over the whole catalogue, without materialising the (T, N) scores.
            return losses.full_softmax_ce(u, target, table)
        r_pos = (u * table[target]).sum(-1)  # (T,)
        if self.n_extra < 0:  # the whole catalogue (index 0 = padding is never a negative)
            r_neg = u @ table.T  # (T, N+1)
            cols = torch.arange(table.shape[0], device=u.device)
            neg_mask = (cols[None, :] != target[:, None]) & (cols[None, :] != 0)
        else:
            parts = [in_batch] if in_batch is not None else []
            if self.n_extra > 0:
                parts.append(self.sample(u.device))
            cand = torch.cat(parts)  # (C,)
            r_neg = u @ table[cand].T  # (T, C)
            neg_mask = cand[None, :] != target[:, None]  # own target (and duplicates of it) excluded
        return ranking_loss(r_pos, r_neg, neg_mask, self.loss_name, self.bpreg, self.final_act)


@dataclass
class SessionParallelTask(_Negatives, Task):
    """Session-parallel mini-batches (Hidasi et al. 2016, Sec. 3.1.1, Fig. 2).

    Sessions (shuffled each epoch) are laid side by side in `batch_size` slots; each mini-batch is
    one time step: the current item of every slot as input, its next item as target. A slot whose
    session ends takes the next session and its hidden state is reset to zero. The epoch ends when
    a slot cannot be refilled. The hidden state carries over between mini-batches (truncated BPTT
    of one step: it is detached, as in the paper).
    """

    _h: torch.Tensor | None = field(default=None, repr=False)

    def batches(
        self, train: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator, device: torch.device
    ) -> Iterator[Batch]:
        sessions = [s for s in train if len(s) >= 2]
        if not sessions:
            return
        order = rng.permutation(len(sessions))
        items = np.concatenate([sessions[i] for i in order]).astype(np.int64)
        offsets = np.zeros(len(order) + 1, np.int64)
        offsets[1:] = np.cumsum([len(sessions[i]) for i in order])
        B = min(batch_size, len(sessions))
        pos = offsets[:B].copy()  # input position of each slot
        end = offsets[1 : B + 1].copy()  # one past the slot's session
        nxt = B  # next session to load
        reset = np.ones(B, dtype=bool)  # the slot starts a new session at this step
        self._h = None
        while True:
            yield {
                "items": torch.as_tensor(items[pos], device=device),
                "target": torch.as_tensor(items[pos + 1], device=device),
                "reset": torch.as_tensor(reset, device=device),
            }
            pos += 1
            reset = pos + 1 >= end  # no target left: load the next session
            for slot in np.flatnonzero(reset):
                if nxt >= len(order):
                    return
                pos[slot], end[slot] = offsets[nxt], offsets[nxt + 1]
                nxt += 1

    def num_batches(self, train: Sequence[np.ndarray], batch_size: int) -> int:
        events = sum(len(s) - 1 for s in train if len(s) >= 2)
        return max(1, events // max(1, min(batch_size, len(train))))

    def loss(self, model: GRU4Rec, batch: Batch) -> torch.Tensor:  # type: ignore[override]
        items, target, reset = batch["items"], batch["target"], batch["reset"]
        h = self._h
        if h is None or h.shape[1] != len(items):
            h = torch.zeros(model.cfg.num_layers, len(items), model.cfg.dim, device=items.device)
        h = h * (~reset)[None, :, None].to(h.dtype)  # (layers, B, H): zero where a session starts
        out, h_new = model.step(items, h)  # (B, H)
        self._h = h_new.detach()
        return self.score_loss(model, out, target, target)


@dataclass
class PaddedNextItemTask(_Negatives, Task):
    """User sequences as left-padded batches: input seq[:-1], target seq[1:], loss at every position.

    The in-batch negatives are the targets at the last position of every row (one per sequence),
    plus the shared extra negatives. With `exclude_seen` (full-catalogue CE only) the row's own
    items (inputs and targets) are not negatives: evaluation never ranks a user's history, so
    pushing those items down spends gradient on rankings nobody asks for.
    """

    max_len: int = 200
    bucket: bool = False  # length-bucketed batches (training.tasks.batch_order)
    newest_prob: float = 1.0  # training.tasks.shifted_batches: else a random earlier window
    exclude_seen: bool = False
    dwell: dict | None = None  # training/dwell.py: inputs repeated by dwell time (needs times=)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.exclude_seen and not (self.loss_name == "ce" and self.n_extra < 0 and self.final_act == "linear"):
            raise ValueError(
                "gru4rec: task.exclude_seen needs the full softmax (train.loss=ce, task.n_extra_negatives=-1, "
                "task.final_act=linear)"
            )

    def batches(
        self,
        train: Sequence[np.ndarray],
        batch_size: int,
        rng: np.random.Generator,
        device: torch.device,
        times: Sequence[np.ndarray] | None = None,
    ) -> Iterator[Batch]:
        if self.dwell is not None:
            args = (train, times, batch_size, rng, device, self.max_len, self.bucket, self.newest_prob)
            yield from dwell_batches(self.dwell, *args)
        else:
            yield from shifted_batches(train, batch_size, rng, device, self.max_len, self.bucket, self.newest_prob)

    def loss(self, model: GRU4Rec, batch: Batch) -> torch.Tensor:  # type: ignore[override]
        h = model.hidden(batch["item_seq"])  # (B, L, H)
        tgt = batch["target"]
        mask = tgt != 0
        if self.exclude_seen:
            u = model.user_vector(h[mask])  # (T, H[+1])
            table = model.item_vectors()  # (N+1, H[+1])
            seen = row_items(table.shape[0], batch["item_seq"], tgt)  # (B, N+1)
            return losses.full_softmax_ce(u, tgt[mask], table, exclude=seen, rows=mask.nonzero(as_tuple=True)[0])
        return self.score_loss(model, h[mask], tgt[mask], tgt[:, -1])
