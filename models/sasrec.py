"""SASRec: Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018).

E_hat = E[s] * sqrt(d) + P            (Sec. III-B, learned positions)
        [+ T[y]]                      (num_types > 0: a learned embedding of each event's type)
S^(b) = SA(F^(b-1)), F^(b) = FFN(S)   (Sec. III-C, causal: query t sees keys <= t)
r_{i,t} = F_t^(B) . M_i               (Sec. III-E, shared item embedding M = E)

`forward` returns F at the last position: the user vector. Training reads every
position (`hidden`), one sample per user sequence, with the loss chosen in training/.

Event types (num_types > 0): type_seq (B, L) int64 aligned with item_seq holds each event's type
as its position in the data's type names plus 1 (0 where items pad), the id the service feeds
(app/bundles/manifest.py EventTypesSpec). Without type_seq every event reads as the first type
(id 1), as the service reads an event whose type the bundle does not name.
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
    num_types: int = 0  # event types read as input, a type embedding per event (set by task.type_input); 0 = none

    def __post_init__(self) -> None:
        check_position_scheme(self.positions)
        if self.num_types < 0:
            raise ValueError(f"num_types must be >= 0, got {self.num_types}")

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
        # T: row 0 pads; absent without types, so untyped models keep their parameters (and init draws).
        self.type_emb = nn.Embedding(cfg.num_types + 1, cfg.dim, padding_idx=0) if cfg.num_types else None
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

    @property
    def reads_types(self) -> bool:
        return self.type_emb is not None

    def type_ids(self, item_seq: torch.Tensor, type_seq: torch.Tensor | None) -> torch.Tensor:
        """(B, L) type ids for item_seq: type_seq cut alike, or every event as the first type (id 1)."""
        if type_seq is None:
            return (item_seq != 0).long()  # (B, L)
        if type_seq.shape != item_seq.shape:
            raise ValueError(f"type_seq {tuple(type_seq.shape)} must match item_seq {tuple(item_seq.shape)}")
        return type_seq

    def hidden(
        self, item_seq: torch.Tensor, type_seq: torch.Tensor | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """(B, L) int64 [+ (B, L) type ids] -> (B, L, D): F^(B) at every position (or (B, 1, D), the newest only)."""
        if self.type_emb is not None:
            type_seq = self.type_ids(item_seq, type_seq)[:, -self.max_len :]  # (B, L)
        item_seq = item_seq[:, -self.max_len :]  # longer histories keep the newest max_len items
        pos_e = self.pos_emb(position_ids(item_seq, self.cfg.positions, self.max_len))  # (B or 1, L, D)
        x = self.item_emb(item_seq) * self.scale + pos_e  # (B, L, D)
        if self.type_emb is not None:
            x = x + self.type_emb(type_seq)  # (B, L, D)
        x = self.emb_drop(x) * (item_seq != 0).unsqueeze(-1)  # padding rows stay zero
        mask = attention_mask(item_seq, causal=True)  # (B, 1, L, L)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and i == len(self.blocks) - 1)
        return self.final_ln(x)  # (B, L, D) or (B, 1, D)

    def forward(self, item_seq: torch.Tensor, type_seq: torch.Tensor | None = None) -> torch.Tensor:
        return self.hidden(item_seq, type_seq, last_only=True)[:, -1, :]  # (B, D) user vector

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight  # (N+1, D)

    def _first_type(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) + T[1]: explanations read every event as the first type, as the service does."""
        return x if self.type_emb is None else x + self.type_emb.weight[1]

    # --- leave-one-out explanations (exported as ablation.onnx, see training/ablation.py) ---------

    def ablation_shares_prefix(self) -> bool:
        """Whether `ablations` applies: with recency positions and causal attention, the events
        older than a removed one keep their positions and their states (see `ablations`)."""
        return self.cfg.positions == "recency"

    def ablations(self, window: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        """User vectors of the history without each of its newest A events.

        window: (1, T) int64, the newest T <= max_len + 1 events, oldest first, no padding, T >= 2;
        ages: (A,) int64 = 0..A-1, 2 <= A <= min(T, max_len).
        Returns (A, D): row a = forward(window without the event of age a; 0 = the newest), equal
        to running each ablated history through `forward`. The history's own vector (forward on
        window[-max_len:]) is not recomputed: the caller has it already (it scored the items).

        Why it is cheaper: removing the event of age a moves every older event one position
        newer (recency positions) and leaves the newer ones in place. Causal attention means an
        older event's state at every block depends only on the events older than it, so it equals
        its state in S' = the history without its newest event (age 0), where every older event
        has moved the same way. S' is encoded once; each ablation a >= 1 then runs only its a newer
        events (ages 0..a-1) through the blocks, attending to S's keys and values of the events
        older than a: A (A - 1) / 2 tokens in all instead of A x T.

        Folded triangle: ablation a needs a slots and ablation A - a needs A - a, so one row of A
        slots holds both (row p = 1..P, P = A // 2: slots 0..p-1 = ablation p, slots p..A-1 =
        ablation A - p; for even A the middle row holds ablation A / 2 twice). A mask keeps each
        sub-row's attention on its own slots and its own share of S'. P x A ~ A^2 / 2 tokens,
        every one of them used, instead of the (A - 1)^2 of a square.
        """
        L = self.max_len
        prev = window[:, :-1][:, -L:]  # (1, Ls): S' = the ablation of age 0
        pos = position_ids(prev, "recency", L)
        xp = self._first_type(self.item_emb(prev) * self.scale + self.pos_emb(pos))  # (1, Ls, D), no padding
        mask = attention_mask(prev, causal=True)  # (1, 1, Ls, Ls)
        prefix = []  # S' at each block's input: the keys and values older events offer
        for i, block in enumerate(self.blocks):
            prefix.append(xp[0])  # (Ls, D)
            xp = block(xp, mask, last_only=i == len(self.blocks) - 1)
        Ls = prev.shape[1]
        n = ages[-1:] + 1  # (1,) = A, as a tensor (the graph's A is dynamic)
        p = ages[1 : ages.shape[0] // 2 + 1][:, None]  # (P, 1) row p packs ablations p and A - p
        slot = ages[None, :]  # (1, A)
        first = slot < p  # (P, A): slot belongs to ablation p (else to ablation A - p)
        age = torch.where(first, slot, slot - p)  # (P, A) age of the slot's event, < its ablated age
        removed = torch.where(first, p, n - p)  # (P, A) the ablated age of the slot's sub-row
        # The event of age j has the same item and position (it stays) in every ablation a > j.
        items = window[0, window.shape[1] - 1 - ages]  # (A,)
        x = self._first_type(
            self.item_emb(items) * self.scale + self.pos_emb(L - 1 - ages)
        )  # (A, D): slot (p, s) = x[age[p, s]]
        prefix_age = Ls - torch.arange(Ls, device=window.device)  # (Ls,) age of S' column c
        see_prefix = prefix_age[None, None, :] > removed[:, :, None]  # (P, A, Ls): older than the removed one
        same = first[:, :, None] == first[:, None, :]  # (P, A, A): key slot in the query's sub-row
        older = age[:, None, :] >= age[:, :, None]  # (P, A, A): key is older than (or is) the query
        keep = torch.cat([see_prefix, same & older], dim=-1)[:, None]  # (P, 1, A, Ls + A)
        # -1e30 where hidden, 0 where visible, by arithmetic: a Where was the graph's slowest node.
        bias = (keep.to(x.dtype) - 1.0) * 1e30  # (P, 1, A, Ls + A)
        # The last block needs each sub-row's newest event only (age 0: slots 0 and p), as forward's last_only.
        newest = torch.cat([torch.zeros_like(p), p], dim=1)  # (P, 2)
        for i, (block, kv_prefix) in enumerate(zip(self.blocks, prefix, strict=True)):
            rows = age if i == 0 else None  # block 1 reads the A distinct events; later ones (P, A, D) states
            last = newest if i == len(self.blocks) - 1 else None
            x = _block_with_prefix(block, x, kv_prefix, bias, rows, last)  # (P, A, D); last block (P, 2, D)
        out = self.final_ln(x).reshape(-1, x.shape[-1])  # (2P, D): ablations p, A - p of row p
        a = ages[1:]  # (A - 1,) ablation a sits in row min(a, A - a), sub-row 0 if a <= A - a
        pick = (torch.minimum(a, n - a) - 1) * 2 + (a > n - a).long()  # (A - 1,)
        return torch.cat([self.final_ln(xp[:, -1]), out[pick]], dim=0)  # (A, D): ablation 0 = S'


def _block_with_prefix(
    block: TransformerBlock,
    x: torch.Tensor,
    kv_prefix: torch.Tensor,
    bias: torch.Tensor,
    rows: torch.Tensor | None = None,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """TransformerBlock.forward for slots (R, Q) whose keys/values are a shared prefix (Lp, D)
    followed by the row's own slots; bias (R, 1, Q, Lp + Q) float = 0 where a slot may attend,
    -1e30 where not. Same math as the block.

    x: (R, Q, D) the slots' states; or, with rows (R, Q) int64, (E, D) distinct events and slot
    (r, s) = x[rows[r, s]] (the first block, whose inputs repeat across rows: each event is
    normalised and projected once, then gathered). queries (R, Qo) int64: compute only these
    slots of each row (the last block). Returns (R, Q or Qo, D)."""
    attn = block.attn
    D = x.shape[-1]
    H = attn.num_heads
    w_q, w_kv = attn.qkv.weight.split([D, 2 * D])
    b_q, b_kv = attn.qkv.bias.split([D, 2 * D])
    if queries is not None:
        bias = bias.gather(2, queries[:, None, :, None].expand(-1, -1, -1, bias.shape[-1]))  # (R, 1, Qo, Lp + Q)
    if rows is not None:
        kv = F.linear(x, w_kv, b_kv)[rows]  # (R, Q, 2D)
        q_rows = rows if queries is None else rows.gather(1, queries)  # (R, Qo) event of each query
        norm = block.ln1(x) if block.norm_first else x  # (E, D)
        q_in, q_src, q = x[q_rows], norm[q_rows], F.linear(norm, w_q, b_q)[q_rows]  # (R, Qo, D) each
    else:
        kv = F.linear(x, w_kv, b_kv)  # (R, Q, 2D)
        q_in = x if queries is None else x.gather(1, queries[:, :, None].expand(-1, -1, D))  # (R, Qo, D)
        q_src = block.ln1(q_in) if block.norm_first else q_in
        q = F.linear(q_src, w_q, b_q)  # (R, Qo, D)
    R, Qo = q.shape[:2]
    q = q.view(R, Qo, H, D // H).transpose(1, 2)  # (R, H, Qo, D/H)
    kp, vp = F.linear(kv_prefix, w_kv, b_kv).view(-1, 2, H, D // H).permute(1, 2, 0, 3)  # (H, Lp, D/H)
    ks, vs = kv.view(R, -1, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (R, H, Q, D/H)
    q = q * (D // H) ** -0.5
    att = torch.cat([q @ kp.transpose(-2, -1), q @ ks.transpose(-2, -1)], dim=-1)  # (R, H, Qo, Lp + Q)
    # Hidden keys: bias -1e30 (each row sees itself, so its largest logit is a visible one); then
    # every logit is raised to at least the row's largest minus 40, so no weight is below
    # e^-40 ~ 4e-18 of the largest (hidden ones included, where exact math has 0): invisible at
    # float32's 6e-8 resolution, while exp inputs below -87 would make denormals that slow ONNX
    # Runtime's softmax (and the matmul after it) about 10x on CPU.
    att = att + bias  # (R, H, Qo, Lp + Q)
    att = torch.maximum(att, att.amax(dim=-1, keepdim=True) - 40.0).softmax(dim=-1)
    Lp = kv_prefix.shape[0]
    y = att[..., :Lp] @ vp + att[..., Lp:] @ vs  # (R, H, Qo, D/H)
    y = attn.out(y.transpose(1, 2).reshape(R, Qo, D))  # (R, Qo, D)
    if block.norm_first:
        y = q_src + block.drop(y)
        h = block.ln2(y)
        return h + block.drop(block.ffn(h))
    y = block.ln1(q_in + block.drop(y))
    return block.ln2(y + block.drop(block.ffn(y)))
