"""LRURec: Linear Recurrent Units for Sequential Recommendation (Yue et al., WSDM 2024).

Written from the paper; the authors' code was read for its defaults only.

Embedding (Sec. 3.1): x_t = LayerNorm(Dropout(E[s_t])), no position embedding (order comes
from the recurrence).

Linear recurrent unit (Sec. 3.2, after Orvieto et al. 2023), per layer, a diagonal complex
recurrence over N state channels:
  lambda = exp(-exp(nu_log) + i exp(theta_log))          (Eq. 4: |lambda| < 1 for any nu_log)
  gamma = exp(gamma_log), initialised to sqrt(1 - |lambda|^2)   (normalisation, Eq. 5)
  h_t = lambda * h_{t-1} + gamma * (B x_t)                (Eq. 3, h_0 = 0, B complex)
  y_t = Re(C h_t)                                          (C complex)
Ring initialisation: |lambda| uniform on the ring [r_min, r_max] (in |lambda|^2), phase
uniform in [0, max_phase).
Block (Sec. 3.3, post-LN with residuals):
  x = LayerNorm(x + Dropout(y))                            the LRU layer
  x = LayerNorm(x + Dropout(W2 Dropout(GELU(W1 x))))       position-wise FFN, 4d wide
Scores (Sec. 3.4): r_{t,i} = x_t . E_i + b_i (shared item table, an output bias per item,
folded into the item vectors as one extra dimension for serving).

Complex numbers as real pairs: B x with B complex and x real is two real linear maps, so B is
`in_proj`, a Linear(d, 2N) whose output is read as (N, 2) = (Re, Im) pairs; Re(C h) is a real
linear map of h's (Re, Im) pairs, so C is `out_proj`, a Linear(2N, d). Both are exactly the
paper's maps, written without a complex dtype so that every path exports to ONNX.

Training runs the recurrence over the whole sequence at once as a parallel (Hillis-Steele)
scan: after level k, position t holds the sum over the 2^k positions ending at t, so
ceil(log2 L) levels of `h[t] += lambda^(2^k) h[t - 2^k]` give every h_t. In eager mode the scan
runs in complex64, in place, with a hand-written backward (the adjoint is the same scan run
backwards with conj(lambda)); traced for export it is the same levels on real pairs.

The model is causal and recurrent: the state after a history, advanced by new items, gives the
same user vector as the whole history (`step`, exported as the bundle's step graph).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Dropout, SeqRecModel


@dataclass
class LRURecConfig:
    num_items: int
    max_len: int = 200  # history length read (the paper: 200 on ML-1M, 50 on Amazon data)
    dim: int = 64  # d: item vectors and block width
    state_dim: int = 128  # N: complex state channels per layer (the authors' code: 2d)
    num_layers: int = 2  # LRU + FFN blocks
    dropout: float = 0.2  # on the embedding and in the FFN
    lru_dropout: float = 0.2  # on the recurrent layer's output
    ffn_mult: int = 4  # FFN width = ffn_mult * d
    r_min: float = 0.8  # ring initialisation: |lambda| in [r_min, r_max]
    r_max: float = 0.99  # upper radius of the ring (long memory near 1)
    max_phase: float = 2 * math.pi  # phase of lambda initialised uniform in [0, max_phase)
    init_std: float = 0.02  # truncated normal (+-2 std) for embeddings and linear maps
    output_bias: bool = True  # b_i, an output bias per item (one more dimension in the vectors)

    def __post_init__(self) -> None:
        if not 0.0 < self.r_min < self.r_max < 1.0:
            raise ValueError(f"need 0 < r_min < r_max < 1, got r_min={self.r_min}, r_max={self.r_max}")
        if self.max_phase <= 0:
            raise ValueError(f"max_phase must be > 0, got {self.max_phase}")

    def to_dict(self) -> dict:
        return asdict(self)


def _exporting() -> bool:
    """Whether a tracer records the graph (ONNX, TorchScript, torch.export): the real-pair scan."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def scan_levels(length: int) -> int:
    """ceil(log2 length): the scan levels that cover `length` positions (0 for one position)."""
    return max(length - 1, 0).bit_length()


class _ComplexScan(torch.autograd.Function):
    """h_t = lam h_{t-1} + b_t along dim 1 from h_0 = 0: b (B, T, N) complex64, lam (N,) complex64.

    Forward: the doubling scan, in place on one copy of b. Backward (PyTorch's conjugate
    convention, grad_x of y = a x is grad_y conj(a)): the gradient of b_t is
    g_t = sum_{s >= t} conj(lam)^(s - t) grad_h_s, the same scan run backwards; and
    grad_lam = sum_t g_t conj(h_{t-1}). Nothing but h is kept for the backward.
    """

    @staticmethod
    def forward(ctx: Any, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        h = b.clone()  # (B, T, N)
        T, p, d = h.shape[1], lam, 1
        while d < T:
            h[:, d:] += p * h[:, :-d]  # the right side is computed before the in-place add
            p, d = p * p, 2 * d
        ctx.save_for_backward(h, lam)
        return h

    @staticmethod
    def backward(ctx: Any, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, lam = ctx.saved_tensors
        g = grad_h.clone()  # (B, T, N)
        T, p, d = g.shape[1], lam.conj(), 1
        while d < T:
            g[:, :-d] += p * g[:, d:]
            p, d = p * p, 2 * d
        grad_lam = (g[:, 1:] * h[:, :-1].conj()).sum(dim=(0, 1))  # (N,)
        return g, grad_lam


def _times(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Complex product on real pairs: a (N, 2), z (..., N, 2) -> a * z (..., N, 2)."""
    ar, ai = a[:, 0], a[:, 1]
    zr, zi = z[..., 0], z[..., 1]
    return torch.stack([ar * zr - ai * zi, ar * zi + ai * zr], dim=-1)


class LRULayer(nn.Module):
    """The linear recurrent unit with its residual and LayerNorm; the FFN is `LRUBlock`'s."""

    def __init__(self, cfg: LRURecConfig) -> None:
        super().__init__()
        n = cfg.state_dim
        self.state_dim = n
        self.levels = scan_levels(cfg.max_len)
        # Ring initialisation (Orvieto et al., Lemma 3.2): |lambda|^2 uniform on [r_min^2, r_max^2].
        u1, u2 = torch.rand(n), torch.rand(n)
        nu = -0.5 * torch.log(u1 * (cfg.r_max**2 - cfg.r_min**2) + cfg.r_min**2)  # -log|lambda|
        theta = u2 * cfg.max_phase
        self.nu_log = nn.Parameter(torch.log(nu))  # (N,)
        self.theta_log = nn.Parameter(torch.log(theta))  # (N,)
        self.gamma_log = nn.Parameter(0.5 * torch.log(1 - torch.exp(-2 * nu)))  # log sqrt(1 - |lambda|^2)
        self.in_proj = nn.Linear(cfg.dim, 2 * n)  # B: (Re, Im) pairs
        self.out_proj = nn.Linear(2 * n, cfg.dim)  # Re(C .)
        self.drop = Dropout(cfg.lru_dropout)
        self.ln = nn.LayerNorm(cfg.dim)

    def power(self, d: int) -> torch.Tensor:
        """lambda^d as (N, 2) real pairs, in polar form: exp(-d exp(nu_log)), angle d exp(theta_log)."""
        r = torch.exp(-d * torch.exp(self.nu_log))  # (N,)
        a = d * torch.exp(self.theta_log)  # (N,): exact in float32 for d a power of 2
        return torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=-1)

    def recurrence(self, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """h_t = lambda h_{t-1} + b_t for t = 1..T: b (B, T, N, 2), h0 (B, N, 2) or None (zero) -> (B, T, N, 2)."""
        lam = self.power(1)  # (N, 2)
        if h0 is not None:  # h_1 = lambda h0 + b_1: the same scan then continues from h0
            b = torch.cat([b[:, :1] + _times(lam, h0[:, None]), b[:, 1:]], dim=1)
        if not _exporting():
            h = _ComplexScan.apply(torch.view_as_complex(b.float().contiguous()), torch.view_as_complex(lam))
            return torch.view_as_real(h)
        # Traced: a fixed number of levels (the graph's length is dynamic, up to max_len); a level
        # whose shift reaches past the sequence adds zeros.
        h = b
        for k in range(self.levels):
            d = 2**k
            shifted = F.pad(h, (0, 0, 0, 0, d, 0))[:, :-d]  # (B, T, N, 2): h_{t-d}, 0 before the start
            h = h + _times(self.power(d), shifted)
        return h

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, h0: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d), mask (B, T) bool -> (x' (B, T or 1, d), state after the newest item (B, N, 2))."""
        B, T, _ = x.shape
        gamma = torch.exp(self.gamma_log)[:, None]  # (N, 1)
        # Padding contributes nothing: the state stays 0 until a row's first item.
        b = self.in_proj(x).view(B, T, self.state_dim, 2) * gamma * mask[:, :, None, None]  # (B, T, N, 2)
        h = self.recurrence(b, h0)  # (B, T, N, 2)
        last = h[:, -1]  # (B, N, 2)
        if last_only:
            x, h = x[:, -1:], h[:, -1:]
        y = self.out_proj(h.reshape(B, h.shape[1], 2 * self.state_dim).to(x.dtype))  # (B, T, d)
        return self.ln(x + self.drop(y)), last


class PositionwiseFFN(nn.Module):
    """x = LayerNorm(x + Dropout(W2 Dropout(GELU(W1 x))))."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(x))))))


class LRUBlock(nn.Module):
    def __init__(self, cfg: LRURecConfig) -> None:
        super().__init__()
        self.lru = LRULayer(cfg)
        self.ffn = PositionwiseFFN(cfg.dim, cfg.ffn_mult * cfg.dim, cfg.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, h0: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, last = self.lru(x, mask, h0, last_only)
        return self.ffn(x), last


class LRURec(SeqRecModel):
    def __init__(self, cfg: LRURecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)  # E
        self.item_bias = nn.Parameter(torch.zeros(cfg.num_items + 1)) if cfg.output_bias else None  # b
        self.emb_drop = Dropout(cfg.dropout)
        self.emb_ln = nn.LayerNorm(cfg.dim)
        self.blocks = nn.ModuleList(LRUBlock(cfg) for _ in range(cfg.num_layers))
        self._init()

    @property
    def state_shape(self) -> tuple[int, int]:
        """(layers, H) of one user's recurrent state: H = 2N, each channel's (Re, Im)."""
        return self.cfg.num_layers, 2 * self.cfg.state_dim

    def _init(self) -> None:
        """Truncated normal (+-2 std) for the item table, the item bias and every linear map; the
        recurrence's own parameters keep their ring initialisation, LayerNorms their 1 and 0."""
        std = self.cfg.init_std
        params = [self.item_emb.weight, *([self.item_bias] if self.item_bias is not None else [])]
        params += [
            p
            for blk in self.blocks
            for m in (blk.lru.in_proj, blk.lru.out_proj, blk.ffn.fc1, blk.ffn.fc2)
            for p in m.parameters()
        ]
        with torch.no_grad():
            for p in params:
                nn.init.trunc_normal_(p, 0.0, std, -2 * std, 2 * std)
            self.item_emb.weight[0].zero_()
            if self.item_bias is not None:
                self.item_bias[0] = 0.0

    def encode(
        self, item_seq: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """item_seq (B, T) [state (layers, B, 2N) before it] -> (x (B, T or 1, d), state after it)."""
        B = item_seq.shape[0]
        mask = item_seq != 0  # (B, T)
        x = self.emb_ln(self.emb_drop(self.item_emb(item_seq)))  # (B, T, d)
        states = []
        for i, block in enumerate(self.blocks):
            h0 = None if state is None else state[i].view(B, self.cfg.state_dim, 2)
            x, last = block(x, mask, h0, last_only and i == len(self.blocks) - 1)
            states.append(last.reshape(B, 2 * self.cfg.state_dim))
        return x, torch.stack(states)  # (B, T or 1, d), (layers, B, 2N)

    def user_vector(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d[+1]): append the constant 1 that multiplies the item bias."""
        if self.item_bias is None:
            return x
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

    def hidden(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded -> (B, L, d[+1]): the user vector after every position (training)."""
        return self.user_vector(self.encode(item_seq[:, -self.max_len :])[0])

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        x, _ = self.encode(item_seq[:, -self.max_len :], last_only=True)
        return self.user_vector(x[:, -1])  # (B, d[+1])

    def step(self, state: torch.Tensor, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance the recurrent state by T new items (no padding): (layers, B, 2N), (B, T) ->
        (state after them, user vector (B, d[+1])). From a zero state over a whole history
        (at most max_len items) it equals `forward` on that history."""
        x, new_state = self.encode(item_seq, state, last_only=True)
        return new_state, self.user_vector(x[:, -1])

    def item_vectors(self) -> torch.Tensor:
        if self.item_bias is None:
            return self.item_emb.weight  # (N+1, d)
        return torch.cat([self.item_emb.weight, self.item_bias[:, None]], dim=1)  # (N+1, d+1): [E | b]


class LRURecStep(nn.Module):
    """`LRURec.step` as a module of its own: the graph exported for incremental serving."""

    def __init__(self, model: LRURec) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: torch.Tensor, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.step(state, item_seq)
