"""TiSASRec: Time Interval Aware Self-Attention for Sequential Recommendation (Li, Wang & McAuley, WSDM 2020).

r^u_ij = min(floor(|t_i - t_j| / r^u), k)        (Sec. 3.2: personalised, clipped intervals;
                                                  r^u = the smallest non-zero interval of the user)
e_ij  = m_i W^Q (m_j W^K + r^K_ij + p^K_j)^T / sqrt(d)     (Eq. 5, keys)
z_i   = sum_j softmax_j(e_ij) (m_j W^V + r^V_ij + p^V_j)     (Eq. 4, values)

r^K, r^V are rows of the interval tables E^K_R, E^V_R ((k+1, d)); p^K, p^V of the position
tables E^K_P, E^V_P ((max_len, d)). Positions enter the keys and values only, not the input (as
the paper); the rest is SASRec (models/sasrec.py): the pre-LN block, the shared item embedding,
the user vector at the newest position.

No (B, L, L, D) tensor: the interval key term is Q E^K_R^T, (B, L, k+1), gathered by r (B, L, L);
the value term scatters the attention weights into their k+1 interval buckets, (B, L, k+1), and
multiplies by E^V_R. Both are exact rewrites of the sums above.

r^u for query i is taken over the window's events up to i, so a position never learns from later
events' times; for the newest position (the user vector) it is the whole window's, as the paper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import (
    Dropout,
    PointWiseFeedForward,
    SeqRecModel,
    attention_mask,
    check_position_scheme,
    dropout,
    position_ids,
)

# Intervals are computed in int32 seconds relative to the window's newest event (2x faster than
# int64 on CPU); a window spanning more than 68 years is clipped there, far beyond any k * r_u.
_INT32_MAX = 2**31 - 1


@dataclass
class TiSASRecConfig:
    num_items: int
    max_len: int = 200
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    emb_dropout: float | None = None  # None = same as dropout
    positions: str = "recency"  # key/value positions: "recency" (newest = max_len - 1) or "absolute"
    init_std: float | None = None  # None = Xavier normal; else N(0, init_std)
    max_interval: int = 256  # k: intervals are clipped to k units of the user's r^u (the authors' default)

    def __post_init__(self) -> None:
        check_position_scheme(self.positions)
        if self.max_interval < 1:
            raise ValueError(f"max_interval must be >= 1, got {self.max_interval}")

    def to_dict(self) -> dict:
        return asdict(self)


def time_intervals(item_seq: torch.Tensor, time_seq: torch.Tensor, max_interval: int) -> torch.Tensor:
    """(B, L) items and unix seconds, left-padded with 0 -> (B, L, L) int32 r_ij in [0, max_interval].

    Row i is scaled by r^u(i), the smallest non-zero gap between consecutive events at positions <= i
    (events are in time order, so that is the smallest non-zero interval among them); 1 when there is
    none (every interval is then 0). Entries with a padding position are max_interval (the attention
    masks them out anyway).
    """
    real = item_seq != 0  # (B, L)
    newest = torch.where(real, time_seq, torch.zeros_like(time_seq)).amax(dim=1, keepdim=True)  # (B, 1)
    t = (newest - time_seq).clamp(0, _INT32_MAX).to(torch.int32)  # (B, L) seconds before the newest event
    gap = (t[:, :-1] - t[:, 1:]).abs()  # (B, L-1): the gap ending at position j = 1..L-1
    gap = torch.where(real[:, 1:] & real[:, :-1] & (gap > 0), gap, _INT32_MAX)
    gap = torch.cat([torch.full_like(t[:, :1], _INT32_MAX), gap], dim=1)  # (B, L)
    scale = _running_min(gap)  # (B, L): r^u(i)
    scale = torch.where(scale == _INT32_MAX, torch.ones_like(scale), scale)
    diff = (t[:, :, None] - t[:, None, :]).abs()  # (B, L, L) |t_i - t_j|
    r = torch.div(diff, scale[:, :, None], rounding_mode="trunc")  # (B, L, L), floor: both are >= 0
    r = torch.minimum(r, torch.full_like(r[:1, :1, :1], max_interval))
    pair = real[:, :, None] & real[:, None, :]  # (B, L, L)
    return torch.where(pair, r, torch.full_like(r[:1, :1, :1], max_interval))


def _running_min(x: torch.Tensor, exportable: bool | None = None) -> torch.Tensor:
    """(B, L) -> (B, L) minimum of x[:, :i+1]: cummin, or, in an exported graph (ONNX has no
    cumulative minimum), the minimum over a lower-triangular (B, L, L) mask. Same integers."""
    if exportable is None:
        exportable = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    if not exportable:
        return x.cummin(dim=1).values
    idx = torch.arange(x.shape[1], device=x.device)
    upto = (idx[None, :] <= idx[:, None])[None]  # (1, L_i, L_j): j is in row i's prefix
    return torch.where(upto, x[:, None, :], torch.full_like(x[:1, None, :1], _INT32_MAX)).amin(dim=-1)


class TimeIntervalAttention(nn.Module):
    """Eq. 4-5 with H heads: each head uses its d/H slice of the position and interval embeddings."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # W^Q, W^K, W^V
        self.out = nn.Linear(dim, dim)  # as our SASRec's attention
        self.dropout = dropout

    def forward(
        self,
        q_in: torch.Tensor,  # (B, Lq, D)
        kv_in: torch.Tensor,  # (B, L, D)
        pos_k: torch.Tensor,  # (B or 1, L, D) p^K_j
        pos_v: torch.Tensor,  # (B or 1, L, D) p^V_j
        int_k: torch.Tensor,  # (K+1, D) E^K_R
        int_v: torch.Tensor,  # (K+1, D) E^V_R
        r: torch.Tensor,  # (B, Lq, L) int64 intervals
        mask: torch.Tensor,  # (B, 1, Lq, L) bool, True = may attend
    ) -> torch.Tensor:
        B, Lq, D = q_in.shape
        L = kv_in.shape[1]
        H, dh = self.num_heads, D // self.num_heads
        w_q, w_kv = self.qkv.weight.split([D, 2 * D])
        b_q, b_kv = self.qkv.bias.split([D, 2 * D])
        q = F.linear(q_in, w_q, b_q).view(B, Lq, H, dh).transpose(1, 2) * dh**-0.5  # (B, H, Lq, dh)
        k, v = F.linear(kv_in, w_kv, b_kv).view(B, L, 2, H, dh).permute(2, 0, 3, 1, 4)  # (B, H, L, dh)
        k = k + pos_k.view(-1, L, H, dh).transpose(1, 2)  # m_j W^K + p^K_j
        v = v + pos_v.view(-1, L, H, dh).transpose(1, 2)  # m_j W^V + p^V_j
        ik = int_k.view(-1, H, dh)  # (K+1, H, dh)
        iv = int_v.view(-1, H, dh)  # (K+1, H, dh)
        idx = r.long()[:, None].expand(B, H, Lq, L)  # (B, H, Lq, L)
        att = q @ k.transpose(-2, -1)  # (B, H, Lq, L)
        # + q_i . r^K_ij: (B, H, Lq, K+1) scores against every interval row, gathered by r_ij
        # (einsum runs it as one (B Lq, dh) x (dh, K+1) product per head, no broadcast copy)
        att = att + torch.einsum("bhld,khd->bhlk", q, ik).gather(-1, idx)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        att = dropout(att, self.dropout, self.training)
        y = att @ v  # (B, H, Lq, dh)
        # + sum_j a_ij r^V_ij = sum_b (sum_{j: r_ij = b} a_ij) E^V_R[b]: weights summed per interval
        buckets = torch.zeros_like(att[..., :1]).expand(B, H, Lq, iv.shape[0]).contiguous()  # (B, H, Lq, K+1)
        y = y + torch.einsum("bhlk,khd->bhld", buckets.scatter_add(-1, idx, att), iv)
        return self.out(y.transpose(1, 2).reshape(B, Lq, D))  # (B, Lq, D)


class TiSASRecBlock(nn.Module):
    """SASRec's pre-LN block with time-interval-aware attention: q = LN(x); y = q + SA(q, x); FFN."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = TimeIntervalAttention(dim, num_heads, dropout)
        self.ffn = PointWiseFeedForward(dim, dim, dropout)
        self.ln1 = nn.LayerNorm(dim, eps=1e-8)
        self.ln2 = nn.LayerNorm(dim, eps=1e-8)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, L, D)
        pos_k: torch.Tensor,
        pos_v: torch.Tensor,
        int_k: torch.Tensor,
        int_v: torch.Tensor,
        r: torch.Tensor,  # (B, L, L)
        mask: torch.Tensor,  # (B, 1, L, L)
        last_only: bool = False,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with last_only, (B, 1, D): one query row (serving's final block)."""
        if last_only:
            x_q, r, mask = x[:, -1:], r[:, -1:], mask[:, :, -1:]
        else:
            x_q = x
        q = self.ln1(x_q)
        y = q + self.drop(self.attn(q, x, pos_k, pos_v, int_k, int_v, r, mask))  # keys/values un-normalised
        h = self.ln2(y)
        return h + self.drop(self.ffn(h))


class TiSASRec(SeqRecModel):
    uses_times = True

    def __init__(self, cfg: TiSASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)  # M_I (shared output table)
        self.pos_k = nn.Embedding(cfg.max_len, cfg.dim)  # E^K_P
        self.pos_v = nn.Embedding(cfg.max_len, cfg.dim)  # E^V_P
        self.int_k = nn.Embedding(cfg.max_interval + 1, cfg.dim)  # E^K_R
        self.int_v = nn.Embedding(cfg.max_interval + 1, cfg.dim)  # E^V_R
        self.emb_drop = Dropout(cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout)
        self.blocks = nn.ModuleList(TiSASRecBlock(cfg.dim, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.final_ln = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.scale = math.sqrt(cfg.dim)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            if self.cfg.init_std is None:
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, self.cfg.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def hidden(self, item_seq: torch.Tensor, time_seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L) items, (B, L) unix seconds -> (B, L, D) at every position (or (B, 1, D), the newest)."""
        item_seq = item_seq[:, -self.max_len :]  # longer histories keep the newest max_len events
        time_seq = time_seq[:, -self.max_len :]
        pos = position_ids(item_seq, self.cfg.positions, self.max_len)  # (B or 1, L)
        pos_k, pos_v = self.pos_k(pos), self.pos_v(pos)  # (B or 1, L, D)
        x = self.item_emb(item_seq) * self.scale  # (B, L, D)
        x = self.emb_drop(x) * (item_seq != 0).unsqueeze(-1)  # padding rows stay zero
        mask = attention_mask(item_seq, causal=True)  # (B, 1, L, L)
        r = time_intervals(item_seq, time_seq, self.cfg.max_interval)  # (B, L, L)
        int_k, int_v = self.int_k.weight, self.int_v.weight  # (K+1, D)
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            x = block(x, pos_k, pos_v, int_k, int_v, r, mask, last_only=last)
        return self.final_ln(x)  # (B, L, D) or (B, 1, D)

    def forward(self, item_seq: torch.Tensor, time_seq: torch.Tensor) -> torch.Tensor:
        return self.hidden(item_seq, time_seq, last_only=True)[:, -1, :]  # (B, D) user vector

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight  # (N+1, D)
