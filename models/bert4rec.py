"""BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from Transformer.

Sun et al., CIKM 2019. Written from the paper.

h^0_i = v_i + p_i                                   (Sec. 3.5, learned positions; LayerNorm + dropout as in BERT)
                                                    (p counted from the newest item, or from the oldest: `positions`)
h^l = Trm(h^{l-1}), Trm = post-LN block, GELU FFN   (Sec. 3.3, bidirectional: every position sees every item)
P(v) = softmax(GELU(h^L_t W^P + b^P) E^T + b^O)     (Sec. 3.5, eq. 7: E is the input embedding table, shared)
                                                    (`head_norm`: LayerNorm after the GELU, as the authors'
                                                    code does with BERT's masked-LM transform)

The vocabulary has a `[mask]` token (index N+1). Training (Cloze, Sec. 3.6) replaces a fraction of
the items by `[mask]` and predicts them (training/cloze.py). Inference appends `[mask]` after the
history and reads its output; that happens inside `forward`, so the exported graph takes the same
plain history as every other model. `forward` returns [GELU(h W^P + b^P), 1] and `item_vectors`
[E, b^O], so the score <user_vec, item_vec> is exactly eq. 7's logit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Dropout, SeqRecModel, TransformerBlock, attention_mask, check_position_scheme, position_ids


@dataclass
class BERT4RecConfig:
    num_items: int
    max_len: int = 200  # N in the paper: positions, including the appended [mask] at inference
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.1
    ffn_mult: int = 4  # FFN hidden = 4d (Sec. 3.3)
    init_std: float = 0.02  # truncated normal, as BERT
    # "recency" (newest = max_len - 1) or "absolute" (oldest = 0, as right-padded BERT4Rec code
    # such as Klenitskiy & Vasilev's learns); [mask] tokens count as items.
    positions: str = "recency"
    # The authors' released code (BERT's masked-LM head) applies LayerNorm to GELU(h W^P + b^P);
    # eq. 7 omits it. Without it the user vector is confined to GELU's range (>= -0.17 per dim).
    head_norm: bool = False

    def __post_init__(self) -> None:
        check_position_scheme(self.positions)

    def to_dict(self) -> dict:
        return asdict(self)


class BERT4Rec(SeqRecModel):
    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        self.mask_token = cfg.num_items + 1
        self.item_emb = nn.Embedding(cfg.num_items + 2, cfg.dim, padding_idx=0)  # E: pad, items, [mask]
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)  # P
        self.emb_ln = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.emb_drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.num_heads, cfg.dropout, cfg.ffn_mult * cfg.dim, "gelu", norm_first=False)
            for _ in range(cfg.num_layers)
        )
        self.out_proj = nn.Linear(cfg.dim, cfg.dim)  # W^P, b^P
        self.out_ln = nn.LayerNorm(cfg.dim, eps=1e-12) if cfg.head_norm else nn.Identity()
        self.out_bias = nn.Parameter(torch.zeros(cfg.num_items + 1))  # b^O (row 0 = padding, never ranked)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=self.cfg.init_std, a=-2 * self.cfg.init_std, b=2 * self.cfg.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded, may hold [mask] tokens, L <= max_len -> (B, L, D): h^L at every position."""
        return self.hidden_states(item_seq)[-1]

    def hidden_states(self, item_seq: torch.Tensor) -> list[torch.Tensor]:
        """[h^0, h^1, ..., h^L], each (B, L, D): the embedding output, then every block's output."""
        pos = position_ids(item_seq, self.cfg.positions, self.max_len)  # (B, L) or (1, L)
        x = self.emb_drop(self.emb_ln(self.item_emb(item_seq) + self.pos_emb(pos)))  # (B, L, D)
        mask = attention_mask(item_seq, causal=False)  # (B, 1, L, L): bidirectional, padding keys hidden
        states = [x]
        for block in self.blocks:
            states.append(block(states[-1], mask))
        return states

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D): GELU(h W^P + b^P), the projection of eq. 7 (then LayerNorm if head_norm)."""
        return self.out_ln(F.gelu(self.out_proj(h)))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D+1): [project(h), 1], the left factor of eq. 7."""
        z = self.project(h)
        return torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)

    def append_mask(self, item_seq: torch.Tensor) -> torch.Tensor:
        """History -> history + [mask]; a full history drops its oldest item to make room."""
        hist = item_seq[:, -(self.max_len - 1) :]  # (B, <= max_len - 1)
        mask_col = torch.ones_like(hist[:, :1]) * self.mask_token  # (B, 1); batch size stays dynamic in ONNX
        return torch.cat([hist, mask_col], dim=1)  # (B, <= max_len)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        seq = self.append_mask(item_seq)
        return self.head(self.encode(seq)[:, -1, :])  # (B, D+1): output at [mask]

    def item_vectors(self) -> torch.Tensor:
        # (N+1, D+1): [E | b^O]; the [mask] row of E is not a candidate and is left out.
        return torch.cat([self.item_emb.weight[: self.num_items + 1], self.out_bias[:, None]], dim=1)
