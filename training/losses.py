"""Training objectives over (hidden state, target) pairs against an item table.

All take h: (T, D) hidden states at the positions that have a target, pos: (T,) target
item indices, and the item table W: (N+1, D) (row 0 = padding, never a candidate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_softmax_ce(
    h: torch.Tensor,
    pos: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the whole catalogue: -log softmax(h W^T + b)[pos].

    Extra rows past the catalogue (e.g. a [mask] token) must be sliced off by the caller;
    the padding row 0 is dropped here, so it is never a candidate.
    exclude: (T, N+1) bool, items that are not negatives for that position (e.g. the user's
    own items: evaluation never ranks them, and a later one is a positive elsewhere in the
    sequence); the positive itself always stays in the softmax.
    """
    logits = h @ table[1:].T  # (T, N)
    if bias is not None:
        logits = logits + bias[1:]
    if exclude is not None:
        drop = exclude[:, 1:].scatter(1, (pos - 1)[:, None], False)  # (T, N): the positive stays
        logits = logits.masked_fill(drop, float("-inf"))
    return F.cross_entropy(logits.float(), pos - 1)


def bce_negatives(h: torch.Tensor, pos: torch.Tensor, table: torch.Tensor, num_negatives: int = 1) -> torch.Tensor:
    """SASRec's original loss: -log s(r_pos) - sum_j log(1 - s(r_neg_j)), negatives uniform per position."""
    T = h.shape[0]
    num_items = table.shape[0] - 1
    neg = torch.randint(1, num_items + 1, (T, num_negatives), device=h.device)  # (T, K)
    # A sampled negative equal to the positive is resampled once; the rest are vanishingly rare.
    clash = neg == pos[:, None]
    neg = torch.where(clash, torch.randint_like(neg, 1, num_items + 1), neg)
    pos_logit = (h * table[pos]).sum(-1)  # (T,)
    neg_logit = torch.einsum("td,tkd->tk", h, table[neg])  # (T, K)
    return (
        F.binary_cross_entropy_with_logits(pos_logit.float(), torch.ones_like(pos_logit, dtype=torch.float))
        + F.binary_cross_entropy_with_logits(neg_logit.float(), torch.zeros_like(neg_logit, dtype=torch.float))
        * num_negatives
    )


def sampled_softmax(
    h: torch.Tensor,
    pos: torch.Tensor,
    table: torch.Tensor,
    num_negatives: int,
    popularity: torch.Tensor | None = None,
    logq: str = "negatives",
) -> torch.Tensor:
    """Softmax over the positive and `num_negatives` negatives shared by the batch.

    Negatives are uniform, or drawn in proportion to `popularity` (any non-negative weights,
    e.g. supp^alpha) with a logQ correction for that draw (Yi et al. 2019).
    logq="negatives": subtract log q from the negatives' logits only (q = draw probability);
    logq="sampled": subtract log(K q) from the positive's and every negative's logit, the
    sampled-softmax estimate of the full softmax (Jean et al. 2015). The two differ by a
    log q_pos shift of the positive, which favours rare targets in the "negatives" form.
    A negative that equals the positive is masked out.
    """
    if logq not in ("negatives", "sampled"):
        raise ValueError(f"logq must be negatives or sampled, got {logq!r}")
    num_items = table.shape[0] - 1
    pos_logit = (h * table[pos]).sum(-1, keepdim=True)  # (T, 1)
    if popularity is None:
        neg = torch.randint(1, num_items + 1, (num_negatives,), device=h.device)
        neg_logit = h @ table[neg].T  # (T, K)
    else:
        neg = torch.multinomial(popularity, num_negatives, replacement=True)
        log_total = popularity.sum().log()  # log q_i = log pop_i - log_total
        neg_logit = h @ table[neg].T - (popularity[neg].log() - log_total)  # (T, K)
        if logq == "sampled":
            # Same constant log K on both sides keeps the softmax unchanged except for q_pos.
            pos_logit = pos_logit - (popularity[pos].log() - log_total)[:, None]
    neg_logit = neg_logit.masked_fill(neg[None, :] == pos[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1).float()  # (T, 1 + K)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=h.device))
