"""SASRec: Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018).

E_hat = E[s] * sqrt(d) + P            (Sec. III-B, learned positions)
S^(b) = SA(F^(b-1)), F^(b) = FFN(S)   (Sec. III-C, causal: query t sees keys <= t)
r_{i,t} = F_t^(B) . M_i               (Sec. III-E, shared item embedding M = E)

`forward` returns F at the last position: the user vector. Training reads every
position (`hidden`), one sample per user sequence, with the loss chosen in training/.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import (
    Dropout,
    SeqRecModel,
    TransformerBlock,
    attention_mask,
    check_position_scheme,
    position_ids,
)


@dataclass
class SASRecConfig:
    num_items: int
    max_len: int = 200
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    emb_dropout: float | None = None  # None = same as dropout
    norm_first: bool = True  # the paper's block; False = post-LN
    positions: str = "recency"  # "recency" (newest = max_len - 1) or "absolute" (oldest = 0)
    init_std: float | None = None  # None = Xavier normal; else N(0, init_std) (Klenitskiy & Vasilev)

    def __post_init__(self) -> None:
        check_position_scheme(self.positions)

    def to_dict(self) -> dict:
        return asdict(self)


class SASRec(SeqRecModel):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)  # E (= M, shared)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)  # P
        self.emb_drop = Dropout(cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.num_heads, cfg.dropout, cfg.dim, "relu", cfg.norm_first)
            for _ in range(cfg.num_layers)
        )
        self.final_ln = nn.LayerNorm(cfg.dim, eps=1e-8) if cfg.norm_first else nn.Identity()
        self.scale = math.sqrt(cfg.dim)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            if self.cfg.init_std is None:
                nn.init.xavier_normal_(m.weight)
            else:  # small init: every block starts close to the identity (its residual)
                nn.init.normal_(m.weight, 0.0, self.cfg.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def hidden(self, item_seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L) int64 -> (B, L, D): F^(B) at every position (or (B, 1, D), the newest only)."""
        item_seq = item_seq[:, -self.max_len :]  # longer histories keep the newest max_len items
        pos_e = self.pos_emb(position_ids(item_seq, self.cfg.positions, self.max_len))  # (B or 1, L, D)
        x = self.item_emb(item_seq) * self.scale + pos_e  # (B, L, D)
        x = self.emb_drop(x) * (item_seq != 0).unsqueeze(-1)  # padding rows stay zero
        mask = attention_mask(item_seq, causal=True)  # (B, 1, L, L)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and i == len(self.blocks) - 1)
        return self.final_ln(x)  # (B, L, D) or (B, 1, D)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.hidden(item_seq, last_only=True)[:, -1, :]  # (B, D) user vector

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight  # (N+1, D)

    # --- leave-one-out explanations (exported as ablation.onnx, see training/ablation.py) ---------

    def ablation_shares_prefix(self) -> bool:
        """Whether `ablations` applies: with recency positions and causal attention, the events
        older than a removed one keep their positions and their states (see `ablations`)."""
        return self.cfg.positions == "recency"

    def ablations(self, window: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        """User vectors of a history and of the history without each of its newest A events.

        window: (1, T) int64, the newest T <= max_len + 1 events, oldest first, no padding, T >= 2;
        ages: (A,) int64 = 0..A-1, 2 <= A <= min(T, max_len).
        Returns (A + 1, D): row 0 = forward(window), row 1 + a = forward(window without the event
        of age a; 0 = the newest), equal to running each ablated history through `forward`.

        Why it is cheaper: removing the event of age a moves every older event one position
        newer (recency positions) and leaves the newer ones in place. Causal attention means an
        older event's state at every block depends only on the events older than it, so it equals
        its state in S' = the history without its newest event (age 0), where every older event
        has moved the same way. S' is encoded once; each ablation a then runs only its a newer
        events through the blocks, attending to S's keys and values of the events older than a:
        A (A - 1) / 2 tokens in all instead of (A + 1) x T.
        """
        L = self.max_len
        full = window[:, -L:]  # (1, Lf)
        prev = window[:, :-1][:, -L:]  # (1, Ls): S' = the ablation of age 0
        pos = position_ids(prev, "recency", L)
        xp = self.item_emb(prev) * self.scale + self.pos_emb(pos)  # (1, Ls, D), no padding
        mask = attention_mask(prev, causal=True)  # (1, 1, Ls, Ls)
        prefix = []  # S' at each block's input: the keys and values older events offer
        for i, block in enumerate(self.blocks):
            prefix.append(xp[0])  # (Ls, D)
            xp = block(xp, mask, last_only=i == len(self.blocks) - 1)
        Ls = prev.shape[1]
        rows = ages[1:]  # (R,) the ablated age a of each suffix row, a >= 1
        slots = ages[:-1]  # (Q,) slot j = the event of age j (valid in row a when j < a)
        items = window[0, window.shape[1] - 1 - slots]  # (Q,)
        x = self.item_emb(items) * self.scale + self.pos_emb(L - 1 - slots)  # (Q, D): positions stay
        x = x.unsqueeze(0).expand(rows.shape[0], -1, -1)  # (R, Q, D)
        prefix_age = Ls - torch.arange(Ls, device=window.device)  # (Ls,) age of S' column c
        see_prefix = (prefix_age[None, :] > rows[:, None])[:, None, :]  # (R, 1, Ls): older than a
        older = slots[None, :] >= slots[:, None]  # (Q, Q): key j' is older than (or is) query j
        itself = (slots[None, :] == slots[:, None])[None]  # every slot sees itself: no all-masked row
        see_suffix = (older[None] & (slots[None, None, :] < rows[:, None, None])) | itself  # (R, Q, Q)
        keep = torch.cat([see_prefix.expand(-1, slots.shape[0], -1), see_suffix], dim=-1)  # (R, Q, Ls + Q)
        for i, (block, kv_prefix) in enumerate(zip(self.blocks, prefix, strict=True)):
            # The last block needs only slot 0 (age 0, the newest event), as forward's last_only.
            x = _block_with_prefix(block, x, kv_prefix, keep, last_only=i == len(self.blocks) - 1)
        suffix_vecs = self.final_ln(x[:, 0])  # (R, D): the newest event of each ablated history
        return torch.cat([self(full), self.final_ln(xp[:, -1]), suffix_vecs], dim=0)  # (A + 1, D)


def _block_with_prefix(
    block: TransformerBlock, x: torch.Tensor, kv_prefix: torch.Tensor, keep: torch.Tensor, last_only: bool = False
) -> torch.Tensor:
    """TransformerBlock.forward for queries x (R, Q, D) whose keys/values are a shared prefix
    (Lp, D) followed by x itself; keep (R, Q, Lp + Q) bool = may attend. Same math as the block.
    With last_only, only query slot 0 is computed: (R, 1, D)."""
    attn = block.attn
    R, Q, D = x.shape
    H = attn.num_heads
    w_q, w_kv = attn.qkv.weight.split([D, 2 * D])
    b_q, b_kv = attn.qkv.bias.split([D, 2 * D])
    q_in = x[:, :1] if last_only else x
    keep = keep[:, :1] if last_only else keep
    Qo = q_in.shape[1]
    q_src = block.ln1(q_in) if block.norm_first else q_in
    q = F.linear(q_src, w_q, b_q).view(R, Qo, H, D // H).transpose(1, 2)  # (R, H, Qo, D/H)
    kp, vp = F.linear(kv_prefix, w_kv, b_kv).view(-1, 2, H, D // H).permute(1, 2, 0, 3)  # (H, Lp, D/H)
    ks, vs = F.linear(x, w_kv, b_kv).view(R, Q, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (R, H, Q, D/H)
    q = q * (D // H) ** -0.5
    att = torch.cat([q @ kp.transpose(-2, -1), q @ ks.transpose(-2, -1)], dim=-1)  # (R, H, Qo, Lp + Q)
    att = att.masked_fill(~keep[:, None], float("-inf")).softmax(dim=-1)
    Lp = kv_prefix.shape[0]
    y = att[..., :Lp] @ vp + att[..., Lp:] @ vs  # (R, H, Qo, D/H)
    y = attn.out(y.transpose(1, 2).reshape(R, Qo, D))  # (R, Qo, D)
    if block.norm_first:
        y = q_src + block.drop(y)
        h = block.ln2(y)
        return h + block.drop(block.ffn(h))
    y = block.ln1(q_in + block.drop(y))
    return block.ln2(y + block.drop(block.ffn(y)))
