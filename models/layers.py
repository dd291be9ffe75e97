"""Layers shared by the sequence models, and the one contract every model honours.

Serving contract: `forward(item_seq) -> user_vec` where item_seq is (B, L) int64,
left-padded with 0 (newest item last), and `item_vectors()` is the (N+1, D') table with
row 0 = padding, so that score(item i) = <user_vec, item_vectors()[i]>. A model with an
output bias folds it in as one extra dimension (the user vector gets a constant 1).

A model that reads event times (`uses_times = True`) takes a second input,
`forward(item_seq, time_seq)`, time_seq (B, L) int64 unix seconds left-padded with 0 where
item_seq is; it is exported as the ONNX input `time_seq` and the service feeds it the stored
event times.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class SeqRecModel(nn.Module):
    """Base class: subclasses implement `forward` and `item_vectors`."""

    max_len: int
    num_items: int
    uses_times: bool = False  # forward(item_seq, time_seq): see the module docstring

    def item_vectors(self) -> torch.Tensor:  # (N+1, D')
        raise NotImplementedError

    def score(self, item_seq: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """(B, L) [+ (B, L) time_seq] -> (B, N+1) scores over the whole catalogue (row 0 = padding)."""
        return self(item_seq, *extra) @ self.item_vectors().T


def glorot_init_(module: nn.Module) -> None:
    """Uniform in +-sqrt(6 / (fan_in + fan_out)) (Glorot) for every weight, zero biases: the
    initialisation the GRU4Rec papers' code descriptions give, shared by the recurrent models."""
    for name, p in module.named_parameters():
        if "bias" in name:
            nn.init.zeros_(p)
        else:
            nn.init.xavier_uniform_(p)


def absolute_positions(item_seq: torch.Tensor) -> torch.Tensor:
    """(B, L) left-padded -> (B, L) position ids counted from the oldest item of the window.

    The oldest item gets 0, the k-th item k - 1 (padding gets 0; it is masked and zeroed).
    Unlike recency positions, this tells the model how far into its history the user is:
    what right-padded implementations (RecBole, Klenitskiy & Vasilev's SASRec) learn.
    On ML-1M a user's first ratings are the sign-up questionnaire's, unlike later ones.
    Causal: position t depends on items <= t only.
    """
    return (torch.cumsum((item_seq != 0).long(), dim=1) - 1).clamp(min=0)  # (B, L)


def recency_positions(length: int, max_len: int, device: torch.device) -> torch.Tensor:
    """Position ids counted from the end: the newest item always gets max_len - 1.

    Sequences are left-padded, so this is the same as left-padding every input to
    max_len, but lets inference run on shorter inputs without changing the result.
    """
    return torch.arange(max_len - length, max_len, device=device)  # (L,)


POSITION_SCHEMES = ("recency", "absolute")


def check_position_scheme(scheme: str) -> None:
    """Config validation shared by the models that offer both schemes."""
    if scheme not in POSITION_SCHEMES:
        raise ValueError(f"positions must be one of {', '.join(map(repr, POSITION_SCHEMES))}, got {scheme!r}")


def position_ids(item_seq: torch.Tensor, scheme: str, max_len: int) -> torch.Tensor:
    """(B, L) left-padded -> position ids for `scheme`: (B, L) absolute, or (1, L) recency."""
    if scheme == "absolute":
        return absolute_positions(item_seq)
    return recency_positions(item_seq.shape[1], max_len, item_seq.device)[None]


# A context variable, not a module global: a block (a benchmark, a test) switches it for itself only.
_FAST_CPU_DROPOUT: contextvars.ContextVar[bool] = contextvars.ContextVar("fast_cpu_dropout", default=True)


@contextmanager
def fast_cpu_dropout(enabled: bool) -> Iterator[None]:
    """Within the block, CPU dropout draws its mask with dropout_keep (True, the default) or uses
    torch's own dropout and its random stream (False; benchmarks/training/dropout_step.py compares them)."""
    token = _FAST_CPU_DROPOUT.set(enabled)
    try:
        yield
    finally:
        _FAST_CPU_DROPOUT.reset(token)


def dropout_keep(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout multiplier shaped like x: 1 / (1 - p) where an element is kept, else 0.

    Why not torch's dropout on CPU: its bernoulli draws one random number per element and was
    ~20% of a SASRec ML-1M training step (attention probabilities are (B, H, L, L)). Here one
    64-bit draw gives four 16-bit uniforms, so p is quantised to 1/65536 and the kept elements
    are scaled by the quantised rate, which keeps E[output] = input exactly.
    """
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    u = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    drop = round(p * 65536)  # dropped where u < drop - 32768
    scale = 65536 / (65536 - drop)
    return (u >= drop - 32768).to(x.dtype).mul_(scale)  # 2x faster than torch.where(cond, scale, 0)


def fast_dropout_applies(x: torch.Tensor, p: float, training: bool) -> bool:
    """Whether `dropout` draws its own mask for x (CPU training, 0 < p < 1)."""
    return training and 0.0 < p < 1.0 and x.device.type == "cpu" and _FAST_CPU_DROPOUT.get()


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with a cheaper random mask on CPU (see dropout_keep); identity at inference."""
    if not training or p == 0.0:
        return x
    if fast_dropout_applies(x, p, training):
        return x * dropout_keep(x, p)
    return F.dropout(x, p, True)


class Dropout(nn.Dropout):
    """nn.Dropout (same parameters, same state dict) that uses `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product attention (Vaswani et al.), Q/K/V from one projection."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # q_in: (B, Lq, D); kv_in: (B, L, D); mask: (B, 1, Lq, L) bool, True = may attend
        B, Lq, D = q_in.shape
        L = kv_in.shape[1]
        H = self.num_heads
        w_q, w_kv = self.qkv.weight.split([D, 2 * D])
        b_q, b_kv = self.qkv.bias.split([D, 2 * D])
        q = F.linear(q_in, w_q, b_q).view(B, Lq, H, D // H).transpose(1, 2)  # (B, H, Lq, D/H)
        k, v = F.linear(kv_in, w_kv, b_kv).view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, L, D/H)
        if fast_dropout_applies(q, self.dropout, self.training):
            # softmax(Q K^T / sqrt(d)) with dropout on the attention weights, written out: torch's
            # CPU path for dropout_p > 0 is this same unfused math, plus its slow bernoulli mask.
            att = (q * (D // H) ** -0.5) @ k.transpose(-2, -1)  # (B, H, Lq, L)
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = dropout(att, self.dropout, True) @ v  # (B, H, Lq, D/H)
        else:
            # fused (3x faster than the explicit form on CPU without dropout, exports to ONNX)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).reshape(B, Lq, D)  # (B, Lq, D)
        return self.out(y)


class PointWiseFeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2 (applied to every position alike)."""

    def __init__(self, dim: int, hidden: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class TransformerBlock(nn.Module):
    """One self-attention block.

    norm_first=True  (SASRec, Sec. III-C, g(x) = x + Dropout(g(LayerNorm(x)))), as the authors' code
                     does it: the residual starts from the normalised input, q = LN(x); x = q + SA(q, x).
    norm_first=False (post-LN, BERT): x = LN(x + Dropout(SA(x))); x = LN(x + Dropout(FFN(x))).
    """

    def __init__(
        self, dim: int, num_heads: int, dropout: float, ffn_hidden: int, activation: str, norm_first: bool
    ) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(dim, num_heads, dropout)
        self.ffn = PointWiseFeedForward(dim, ffn_hidden, dropout, activation)
        self.ln1 = nn.LayerNorm(dim, eps=1e-8)
        self.ln2 = nn.LayerNorm(dim, eps=1e-8)
        self.drop = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with last_only, (B, 1, D) for the newest position alone.

        last_only is what serving needs from the final block: keys and values still span
        the whole sequence, but only one query row is computed (same result, ~L x less work).
        """
        q_src = x[:, -1:] if last_only else x
        mask = mask[:, :, -1:] if last_only else mask
        if self.norm_first:
            q = self.ln1(q_src)
            y = q + self.drop(self.attn(q, x, mask))  # as the authors' code: keys/values un-normalised
            h = self.ln2(y)
            return h + self.drop(self.ffn(h))
        y = self.ln1(q_src + self.drop(self.attn(q_src, x, mask)))
        return self.ln2(y + self.drop(self.ffn(y)))


def attention_mask(item_seq: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, L, L) bool: key j visible to query i.

    Padding keys are hidden. Each position may always see itself, so a padding query
    (whose output is discarded) never has an all-masked row, which would give NaN.
    """
    L = item_seq.shape[1]
    keys = (item_seq != 0)[:, None, None, :]  # (B, 1, 1, L)
    idx = torch.arange(L, device=item_seq.device)
    # Built from index comparisons, not eye()/tril(), so every ONNX runtime can execute it.
    mask = keys | (idx[:, None] == idx[None, :])[None, None]  # (B, 1, L, L)
    if causal:
        mask = mask & (idx[None, :] <= idx[:, None])[None, None]
    return mask
