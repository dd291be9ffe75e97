"""GRU4Rec's sampled ranking losses (Hidasi & Karatzoglou, CIKM 2018, "Recurrent Neural Networks
with Top-k Gains for Session-based Recommendations"), written from the paper.

Every loss takes r_pos (T,) the score of each row's target, r_neg (T, C) scores of C candidate
negatives, and neg_mask (T, C) bool: which candidates count as negatives for that row (a
candidate equal to the row's own target is not a negative). With s_j = softmax_j(r_j) over the
row's negatives:

  cross-entropy  -log softmax([r_i, r_1..r_C])_i
  BPR-max        -log sum_j s_j sigma(r_i - r_j) + lambda sum_j s_j r_j^2      (eq. 9, score regularisation)
  TOP1-max       sum_j s_j (sigma(r_j - r_i) + sigma(r_j^2))                   (eq. 8)

`final_act` (a monotone function applied to all scores first, as the paper's final activation)
never changes the ranking, so serving still uses the raw inner product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bpr-max", "top1-max")


def final_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """linear | tanh | elu-<alpha> | leaky-<slope>: strictly increasing, so rankings are unchanged."""
    if name == "linear":
        return x
    if name == "tanh":
        return torch.tanh(x)
    kind, _, arg = name.partition("-")
    if kind == "elu" and arg:
        return F.elu(x, alpha=float(arg))
    if kind == "leaky" and arg:
        return F.leaky_relu(x, negative_slope=float(arg))
    raise ValueError(f"unknown final_act {name!r}: linear, tanh, elu-<alpha> or leaky-<slope>")


def _masked_softmax(r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    s = torch.softmax(r.masked_fill(~mask, float("-inf")), dim=1)
    return torch.nan_to_num(s, nan=0.0)  # a row without any negative contributes nothing


def ranking_loss(
    r_pos: torch.Tensor,
    r_neg: torch.Tensor,
    neg_mask: torch.Tensor,
    loss: str = "ce",
    bpreg: float = 1.0,
    final_act: str = "linear",
) -> torch.Tensor:
    """Mean over rows of the chosen loss. r_pos: (T,), r_neg: (T, C), neg_mask: (T, C) bool."""
    r_pos = final_activation(final_act, r_pos.float())[:, None]  # (T, 1)
    r_neg = final_activation(final_act, r_neg.float())  # (T, C)
    if loss == "ce":
        logits = torch.cat([r_pos, r_neg.masked_fill(~neg_mask, float("-inf"))], dim=1)  # (T, 1 + C)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
    s = _masked_softmax(r_neg, neg_mask)  # (T, C)
    if loss == "bpr-max":
        p = (s * torch.sigmoid(r_pos - r_neg)).sum(dim=1)  # (T,)
        reg = (s * r_neg.square()).sum(dim=1)
        return (-torch.log(p + 1e-24) + bpreg * reg).mean()
    if loss == "top1-max":
        return (s * (torch.sigmoid(r_neg - r_pos) + torch.sigmoid(r_neg.square()))).sum(dim=1).mean()
    raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
