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
from torch import nn

from models.layers import Dropout, SeqRecModel, TransformerBlock, attention_mask, check_position_scheme, position_ids


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
