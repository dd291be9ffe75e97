"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., "Actions Speak Louder than Words:
Trillion-Parameter Sequential Transducers for Generative Recommendations", ICML 2024).

One layer (Sec. 3.1, Eq. 1-3), X the layer input (B, L, d):

U(X), V(X), Q(X), K(X) = Split(phi1(f1(Norm(X))))            f1 linear (no bias), phi1 = SiLU
A(X) V(X)             = phi2(Q K^T + rab^{p,t}) V(X) / N      phi2 = SiLU, pointwise: no softmax
Y(X)                  = f2(Norm(A(X) V(X)) * U(X)) + X        f2 linear, * elementwise

The attention is causal (query i sees keys j <= i) and divided by a constant N = max_len (the
reference implementation divides by its padded length, a constant too): a query's output never
depends on how many events follow it, which is what makes the incremental form below exact.

rab^{p,t}_ij = w^p[i - j] + w^t[b(t_i - t_j)]                 relative attention bias, per layer
b(dt)        = clamp(floor(ln(max(|dt|, 1)) / 0.301), 0, nb)   log-bucketed time gap in seconds

i, j are positions; t the events' unix seconds. The reference code takes the gap from the time of
the event *after* the query (the target's time, known there at training and evaluation); here the
query's own event time: the service passes the history's times only, and this keeps every
position's state a function of the events up to it.

Input: e_i sqrt(d) + p_i (learned absolute positions, oldest event = 0), as the reference's ML-1M
setting. Output: the newest position's state, l2-normalised and divided by a temperature, scored
against l2-normalised item embeddings (cosine / temperature, the reference's sampled-softmax setup;
the temperature is folded into the user vector so every loss and the service see the same scores).

Data without timestamps (e.g. ml-1m.sasrec.txt, order only): `time_buckets = 0` drops w^t and the
time input; the bias is then rab^p alone.

Incremental form (`extend`): HSTU is causal, so the keys and values of past positions at every
layer do not change when events are appended. A cache holds them (per layer, (B, n, H dqk) and
(B, n, H dv)) with the past events' times; appending m events runs only those m positions through
the layers, attending to the cached keys and values, and returns the same user vector as a full
pass over the whole history. Valid while the history fits the window (n + m <= max_len): past it,
the window slides, every absolute position shifts and the oldest key disappears from every
position's attention, so the cache is rebuilt from the newest max_len events (`extend` refuses).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Dropout, SeqRecModel, absolute_positions

POSITION_SCHEMES = ("absolute", "none")
# The reference's bucket width: floor(ln(dt) / 0.301), i.e. ~2.3 buckets per doubling of the gap.
TIME_BUCKET_WIDTH = 0.301


@dataclass
class HSTUConfig:
    num_items: int
    max_len: int = 200
    dim: int = 50  # d: item embedding and layer width
    num_layers: int = 2
    num_heads: int = 1
    attn_dim: int | None = None  # dqk per head (None = dim / num_heads)
    linear_dim: int | None = None  # dv per head (None = dim / num_heads)
    dropout: float = 0.2  # on the input embeddings and on Norm(AV) * U before f2
    emb_dropout: float | None = None  # None = same as dropout
    positions: str = "absolute"  # input position embeddings: "absolute" (oldest = 0) or "none" (rab only)
    time_buckets: int = 128  # nb: log-bucketed time gaps in rab (0 = no time input, data without times)
    l2_norm: bool = True  # cosine scores (user and item vectors l2-normalised), else raw dot products
    temperature: float = 0.05  # l2_norm only: scores = cos / temperature
    init_std: float = 0.02  # item embeddings, f1 and rab weights ~ N(0, init_std)

    def __post_init__(self) -> None:
        if self.positions not in POSITION_SCHEMES:
            raise ValueError(
                f"positions must be one of {', '.join(map(repr, POSITION_SCHEMES))}, got {self.positions!r}"
            )
        if self.time_buckets < 0:
            raise ValueError(f"time_buckets must be >= 0, got {self.time_buckets}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if (self.attn_dim is None or self.linear_dim is None) and self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}: set attn_dim, linear_dim")

    @property
    def dqk(self) -> int:
        return self.attn_dim if self.attn_dim is not None else self.dim // self.num_heads

    @property
    def dv(self) -> int:
        return self.linear_dim if self.linear_dim is not None else self.dim // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


def time_buckets(t_q: torch.Tensor, t_k: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """(B, Lq), (B, Lk) int64 unix seconds -> (B, Lq, Lk) int64 b(t_i - t_j) in [0, num_buckets].

    In float64: with a float32 log, gaps of ~10^6 s fall within rounding of a bucket edge, where two
    runtimes (torch, ONNX Runtime) could disagree; no bucket edge below 2^40 s is within 1.5e-13
    (relative) of an integer, ~40x float64's rounding of the log.
    """
    dt = (t_q[:, :, None] - t_k[:, None, :]).abs().clamp(min=1).to(torch.float64)  # (B, Lq, Lk)
    b = torch.floor(torch.log(dt) / TIME_BUCKET_WIDTH).to(torch.int64)
    return b.clamp(0, num_buckets)


class RelativeBias(nn.Module):
    """rab^{p,t}: one learned scalar per relative position i - j (causal: 0..max_len-1) plus, with
    times, one per log-bucketed time gap."""

    def __init__(self, max_len: int, num_buckets: int, init_std: float) -> None:
        super().__init__()
        self.pos_w = nn.Parameter(torch.randn(max_len) * init_std)  # w^p
        self.time_w = nn.Parameter(torch.randn(num_buckets + 1) * init_std) if num_buckets else None  # w^t

    def forward(self, rel: torch.Tensor, bucket: torch.Tensor | None) -> torch.Tensor:
        """rel (Lq, Lk) int64 i - j clamped to >= 0; bucket (B, Lq, Lk) or None -> (B or 1, Lq, Lk)."""
        bias = self.pos_w[rel][None]  # (1, Lq, Lk)
        if self.time_w is not None and bucket is not None:
            bias = bias + self.time_w[bucket]  # (B, Lq, Lk)
        return bias


class HSTULayer(nn.Module):
    """Eq. 1-3 above, H heads."""

    def __init__(self, cfg: HSTUConfig) -> None:
        super().__init__()
        H, dqk, dv = cfg.num_heads, cfg.dqk, cfg.dv
        self.num_heads, self.dqk, self.dv, self.dim = H, dqk, dv, cfg.dim
        self.splits = [H * dv, H * dv, H * dqk, H * dqk]  # U, V, Q, K
        self.f1 = nn.Linear(cfg.dim, sum(self.splits), bias=False)
        self.f2 = nn.Linear(H * dv, cfg.dim)
        self.rab = RelativeBias(cfg.max_len, cfg.time_buckets, cfg.init_std)
        self.drop = Dropout(cfg.dropout)

    def project(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, L, d) -> U, V (B, L, H dv) and Q, K (B, L, H dqk): Split(phi1(f1(Norm(X))))."""
        h = F.layer_norm(x, (self.dim,), eps=1e-6)
        return list(F.silu(self.f1(h)).split(self.splits, dim=-1))

    def attend(
        self,
        x_q: torch.Tensor,  # (B, Lq, d) the queries' layer input (the residual)
        u: torch.Tensor,  # (B, Lq, H dv)
        q: torch.Tensor,  # (B, Lq, H dqk)
        k: torch.Tensor,  # (B, Lk, H dqk)
        v: torch.Tensor,  # (B, Lk, H dv)
        bias: torch.Tensor,  # (B or 1, Lq, Lk) rab
        keep: torch.Tensor,  # (B or 1, Lq, Lk) float: 1 / N where query i may see key j, else 0
    ) -> torch.Tensor:
        B, Lq, _ = q.shape
        Lk = k.shape[1]
        H = self.num_heads
        qh = q.view(B, Lq, H, self.dqk).transpose(1, 2)  # (B, H, Lq, dqk)
        kh = k.view(B, Lk, H, self.dqk).transpose(1, 2)  # (B, H, Lk, dqk)
        vh = v.view(B, Lk, H, self.dv).transpose(1, 2)  # (B, H, Lk, dv)
        a = F.silu(qh @ kh.transpose(-2, -1) + bias[:, None]) * keep[:, None]  # (B, H, Lq, Lk) phi2(QK^T + rab) / N
        av = (a @ vh).transpose(1, 2).reshape(B, Lq, H * self.dv)  # (B, Lq, H dv)
        av = F.layer_norm(av, (H * self.dv,), eps=1e-6)  # Norm(A V)
        return self.f2(self.drop(av * u)) + x_q  # (B, Lq, d)


class HSTU(SeqRecModel):
    def __init__(self, cfg: HSTUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        self.uses_times = cfg.time_buckets > 0  # forward(item_seq, time_seq) only when rab has w^t
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim) if cfg.positions == "absolute" else None
        self.emb_drop = Dropout(cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout)
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.num_layers))
        self.final_ln = None if cfg.l2_norm else nn.LayerNorm(cfg.dim, eps=1e-6)
        self.scale = math.sqrt(cfg.dim)
        self._init()

    def _init(self) -> None:
        std = self.cfg.init_std
        with torch.no_grad():
            nn.init.trunc_normal_(self.item_emb.weight, 0.0, std, -2 * std, 2 * std)
            self.item_emb.weight[0].zero_()
            if self.pos_emb is not None:
                s = self.cfg.dim**-0.5
                nn.init.trunc_normal_(self.pos_emb.weight, 0.0, s, -2 * s, 2 * s)
            for layer in self.layers:
                nn.init.normal_(layer.f1.weight, 0.0, std)
                nn.init.xavier_uniform_(layer.f2.weight)
                nn.init.zeros_(layer.f2.bias)

    def embed(self, item_seq: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """(B, L) items, positions (B or 1, L) -> (B, L, d): e_i sqrt(d) + p_i, dropout, padding rows 0."""
        x = self.item_emb(item_seq) * self.scale
        if self.pos_emb is not None and pos is not None:
            x = x + self.pos_emb(pos)
        return self.emb_drop(x) * (item_seq != 0).unsqueeze(-1)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) final states -> user vectors: h / |h| / temperature (or LayerNorm(h))."""
        if self.final_ln is not None:
            return self.final_ln(h)
        return F.normalize(h, dim=-1, eps=1e-6) / self.cfg.temperature

    def hidden(
        self, item_seq: torch.Tensor, time_seq: torch.Tensor | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """(B, L) items left-padded with 0 [, (B, L) unix seconds] -> (B, L, d') user vectors at
        every position (or (B, 1, d'), the newest only)."""
        item_seq = item_seq[:, -self.max_len :]  # longer histories keep the newest max_len events
        L = item_seq.shape[1]
        x = self.embed(item_seq, absolute_positions(item_seq))  # (B, L, d)
        idx = torch.arange(L, device=item_seq.device)
        rel_all = idx[:, None] - idx[None, :]  # (L, L) i - j
        keep_all = ((rel_all >= 0)[None] & (item_seq != 0)[:, None, :]).to(x.dtype) / self.cfg.max_len  # (B, L, L)
        rel_all = rel_all.clamp(min=0)
        bucket_all = None
        if self.uses_times:
            if time_seq is None:
                raise ValueError("this HSTU reads event times: pass time_seq")
            time_seq = time_seq[:, -self.max_len :]
            bucket_all = time_buckets(time_seq, time_seq, self.cfg.time_buckets)  # (B, L, L)
        for n, layer in enumerate(self.layers):
            u, v, q, k = layer.project(x)
            rel, keep, bucket, x_q = rel_all, keep_all, bucket_all, x
            if last_only and n == len(self.layers) - 1:  # the user vector needs the newest query only
                u, q, x_q, rel, keep = u[:, -1:], q[:, -1:], x[:, -1:], rel[-1:], keep[:, -1:]
                bucket = bucket[:, -1:] if bucket is not None else None
            x = layer.attend(x_q, u, q, k, v, layer.rab(rel, bucket), keep)
        return self.output(x)

    def forward(self, item_seq: torch.Tensor, time_seq: torch.Tensor | None = None) -> torch.Tensor:
        return self.hidden(item_seq, time_seq, last_only=True)[:, -1, :]  # (B, d') user vector

    def item_vectors(self) -> torch.Tensor:
        w = self.item_emb.weight  # (N+1, d)
        return F.normalize(w, dim=-1, eps=1e-6) if self.cfg.l2_norm else w

    # --- incremental encoding: a per-user cache of every layer's keys and values ------------------

    def empty_cache(self, batch: int = 1) -> HSTUCache:
        """A cache of no events (then `extend` with the whole history encodes it)."""
        w = self.item_emb.weight
        nl = len(self.layers)
        k = w.new_zeros(nl, batch, 0, self.cfg.num_heads * self.cfg.dqk)
        v = w.new_zeros(nl, batch, 0, self.cfg.num_heads * self.cfg.dv)
        times = torch.zeros(batch, 0, dtype=torch.int64, device=w.device) if self.uses_times else None
        return HSTUCache(k, v, times)

    def extend(
        self, cache: HSTUCache, item_seq: torch.Tensor, time_seq: torch.Tensor | None = None
    ) -> tuple[HSTUCache, torch.Tensor]:
        """Append m events (B, m) (no padding; every row of the batch has the same cached length n)
        -> (the cache of the n + m events, (B, d') user vector), equal to forward on the whole
        history. Raises ValueError when n + m > max_len (the window slides: rebuild the cache
        from the newest max_len events)."""
        n, m = cache.length, item_seq.shape[1]
        if n + m > self.max_len:
            raise ValueError(f"{n} cached + {m} new events exceed max_len {self.max_len}: rebuild the cache")
        if self.uses_times and (time_seq is None or cache.times is None):
            raise ValueError("this HSTU reads event times: the cache and the new events need them")
        k, v, vec = self.step(cache.k, cache.v, item_seq, cache.times, time_seq)
        times = torch.cat([cache.times, time_seq], dim=1) if self.uses_times else None  # type: ignore[list-item]
        return HSTUCache(k, v, times), vec

    def step(
        self,
        cache_k: torch.Tensor,  # (layers, B, n, H dqk)
        cache_v: torch.Tensor,  # (layers, B, n, H dv)
        item_seq: torch.Tensor,  # (B, m) new events, no padding
        cache_times: torch.Tensor | None = None,  # (B, n) the cached events' unix seconds
        time_seq: torch.Tensor | None = None,  # (B, m) the new events' unix seconds
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cached step as tensors in and out (what step.onnx exports): -> (cache_k (layers, B,
        n + m, H dqk), cache_v (layers, B, n + m, H dv), user_vec (B, d')). Positions n .. n+m-1."""
        n, m = cache_k.shape[2], item_seq.shape[1]
        dev = item_seq.device
        pos = torch.arange(m, device=dev) + n  # (m,) absolute positions of the new events
        x = self.embed(item_seq, pos[None])  # (B, m, d)
        rel = pos[:, None] - torch.arange(n + m, device=dev)[None, :]  # (m, n + m) i - j
        keep = ((rel >= 0).to(x.dtype) / self.cfg.max_len)[None]  # (1, m, n + m): causal, no padding
        rel = rel.clamp(min=0)
        bucket = None
        if self.uses_times:
            assert cache_times is not None and time_seq is not None
            bucket = time_buckets(time_seq, torch.cat([cache_times, time_seq], dim=1), self.cfg.time_buckets)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            u, v, q, k = layer.project(x)  # (B, m, .)
            k = torch.cat([cache_k[i], k], dim=1)  # (B, n + m, H dqk)
            v = torch.cat([cache_v[i], v], dim=1)  # (B, n + m, H dv)
            ks.append(k)
            vs.append(v)
            if i == len(self.layers) - 1:  # the last layer's output is needed at the newest event only
                u, q, x, keep_q, rel_q = u[:, -1:], q[:, -1:], x[:, -1:], keep[:, -1:], rel[-1:]
                bucket = bucket[:, -1:] if bucket is not None else None
            else:
                keep_q, rel_q = keep, rel
            x = layer.attend(x, u, q, k, v, layer.rab(rel_q, bucket), keep_q)
        return torch.stack(ks), torch.stack(vs), self.output(x[:, -1])


@dataclass
class HSTUCache:
    """Per-user incremental state: every layer's keys and values of the n events so far.

    k (layers, B, n, H dqk), v (layers, B, n, H dv), times (B, n) int64 (None without times).
    Rebuild (encode from an empty cache) when n would pass max_len, when the model changes (a
    bundle reload), or when the history changes other than by appending (an event arriving with
    an earlier time than the newest lands inside the history, not after it).
    """

    k: torch.Tensor
    v: torch.Tensor
    times: torch.Tensor | None

    @property
    def length(self) -> int:
        return int(self.k.shape[2])

    def nbytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the cache with k and v stored as `dtype` (times as int64)."""
        item = torch.empty((), dtype=dtype).element_size()
        times = self.times.numel() * 8 if self.times is not None else 0
        return (self.k.numel() + self.v.numel()) * item + times
