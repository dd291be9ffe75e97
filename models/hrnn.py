"""HRNN: a hierarchical recurrent network that carries a user state across sessions.

Quadrana, Karatzoglou, Hidasi & Cremonesi, RecSys 2017 ("Personalizing Session-based
Recommendations with Hierarchical Recurrent Neural Networks"). Written from the paper; no
reference code is used.

Two GRUs. The session-level GRU reads the items of one session, as GRU4Rec does; the user-level
GRU reads one input per finished session, that session's final session-GRU state (Sec. 3.1):
  s_{m,n} = GRU_ses(i_{m,n}, s_{m,n-1})          within session m (Eq. 1)
  c_m     = GRU_usr(s_m, c_{m-1})                 s_m = the last s_{m,n} of session m (Eq. 2)
  s_{m+1,0} = tanh(W_init c_m + b_init)           HRNN Init: the next session starts from the user (Eq. 3)
with c_0 = 0. Variant "all" (HRNN All) also feeds c_m into every step of session m + 1, as an
input concatenated with the item. `user_state=False` starts every session from s = 0 and never
runs the user GRU: GRU4Rec restarted at each session, the paper's session-only baseline.

Each GRU step, for input x and previous state h (torch's gate layout, so the reference test can
write it out):
  r = s(W_r x + b_r + U_r h + c_r)               reset gate
  z = s(W_z x + b_z + U_z h + c_z)               update gate
  n = tanh(W_n x + b_n + r * (U_n h + c_n))      candidate
  h' = (1 - z) * n + z * h

Sessions are not an input: the graph takes `item_seq` and `time_seq` (unix seconds, left-padded
with 0 where the items are) and starts a new session wherever two consecutive events are more
than `session_gap` seconds apart, the rule of training/data/preprocess.py `split_by_gap`. So the
service only passes the stored event times. Scores: r = s W_y^T + b_y with the shared item table
W_y (GRU4Rec's "constrained" embedding), the bias folded in as one extra dimension.

The recurrence is a loop over positions (a state hand-off depends on the data), so an exported
graph is unrolled: traced inputs are left-padded to exactly `max_len` inside the graph, which then
takes any history length up to max_len (longer ones are cut to the newest max_len events).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.layers import Dropout, SeqRecModel, glorot_init_

VARIANTS = ("init", "all")


@dataclass
class HRNNConfig:
    num_items: int
    max_len: int = 200  # history length read at serving / evaluation (the exported graph's unrolled steps)
    dim: int = 128  # session-GRU hidden size (= item vector size: shared embedding)
    user_dim: int = 128  # user-GRU hidden size
    session_gap: int = 1800  # seconds of inactivity that start a new session (as split_by_gap)
    variant: str = "init"  # init (HRNN Init) | all (HRNN All: c_m also an input at every step)
    user_state: bool = True  # false: every session starts from 0 (GRU4Rec per session, no user GRU)
    dropout_emb: float = 0.0  # dropout on the item input of the session GRU
    dropout: float = 0.0  # dropout on the session states (outputs and user-GRU input)
    dropout_user: float = 0.0  # dropout on the user state before it initialises a session
    output_bias: bool = True  # b_y

    def to_dict(self) -> dict:
        return asdict(self)


class GRUWeights(nn.Module):
    """One GRU's parameters: input projection W (3H x in, bias b) and recurrent U (3H x H, bias c)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(in_dim, 3 * hidden)  # [W_r; W_z; W_n], [b_r; b_z; b_n]
        self.rec = nn.Linear(hidden, 3 * hidden)  # [U_r; U_z; U_n], [c_r; c_z; c_n]

    def step(self, gi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """gi: (B, 3H) the input projection W x + b, h: (B, H) -> h' (B, H)."""
        gh = self.rec(h)  # (B, 3H)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h


class HRNN(SeqRecModel):
    uses_times = True

    def __init__(self, cfg: HRNNConfig) -> None:
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
        if cfg.session_gap < 0:
            raise ValueError(f"session_gap must be >= 0 seconds, got {cfg.session_gap}")
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        self.item_out = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)  # W_y, also the GRU input
        self.item_bias = nn.Parameter(torch.zeros(cfg.num_items + 1)) if cfg.output_bias else None  # b_y
        feeds_user = cfg.user_state and cfg.variant == "all"
        self.ses = GRUWeights(cfg.dim + (cfg.user_dim if feeds_user else 0), cfg.dim)
        self.usr: GRUWeights | None = GRUWeights(cfg.dim, cfg.user_dim) if cfg.user_state else None
        self.init_lin: nn.Linear | None = nn.Linear(cfg.user_dim, cfg.dim) if cfg.user_state else None  # W_init, b_init
        self.drop_in = Dropout(cfg.dropout_emb)
        self.drop_out = Dropout(cfg.dropout)
        self.drop_user = Dropout(cfg.dropout_user)
        self._init()

    def _init(self) -> None:
        glorot_init_(self)  # Glorot-uniform weights, zero biases, as models/gru4rec.py
        with torch.no_grad():
            self.item_out.weight[0].zero_()

    def session_starts(self, item_seq: torch.Tensor, time_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) -> (first, boundary), (B, L) bool each.

        first: the oldest event of the window (a session starts, no earlier session is seen);
        boundary: a session starts after an earlier one (gap to the previous event > session_gap).
        """
        real = item_seq != 0  # (B, L)
        prev_real = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)  # (B, L)
        prev_t = torch.cat([time_seq[:, :1], time_seq[:, :-1]], dim=1)  # (B, L)
        gap = time_seq - prev_t  # (B, L) seconds since the previous event
        boundary = real & prev_real & (gap > self.cfg.session_gap)
        return real & ~prev_real, boundary

    def hidden(self, item_seq: torch.Tensor, time_seq: torch.Tensor) -> torch.Tensor:
        """(B, L) items and times, left-padded -> (B, L, H): s at every position (padding: undefined)."""
        item_seq, time_seq = item_seq[:, -self.max_len :], time_seq[:, -self.max_len :]
        B, L = item_seq.shape
        real = item_seq != 0  # (B, L)
        first, boundary = self.session_starts(item_seq, time_seq)
        x = self.drop_in(self.item_out(item_seq))  # (B, L, E)
        feeds_user = self.usr is not None and self.cfg.variant == "all"
        w_x = self.ses.inp.weight[:, : self.cfg.dim] if feeds_user else self.ses.inp.weight  # (3H, E)
        gi_items = x @ w_x.T + self.ses.inp.bias  # (B, L, 3H): the items' input projection, computed once
        s = x.new_zeros(B, self.cfg.dim)  # (B, H) session state
        c = x.new_zeros(B, self.cfg.user_dim)  # (B, U) user state, c_0 = 0
        outs = []
        for t in range(L):
            start = (first[:, t] | boundary[:, t])[:, None]  # (B, 1)
            if self.usr is not None and self.init_lin is not None:
                # Eq. 2: the finished session's last state updates the user (only at a boundary).
                c_next = self.usr.step(self.usr.inp(self.drop_out(s)), c)  # (B, U)
                c = torch.where(boundary[:, t, None], c_next, c)
                h0 = torch.tanh(self.init_lin(self.drop_user(c)))  # (B, H), Eq. 3
            else:
                h0 = torch.zeros_like(s)  # session-only: every session from 0
            h_prev = torch.where(start, h0, s)  # (B, H)
            gi = gi_items[:, t]  # (B, 3H)
            if feeds_user:
                gi = gi + self.drop_user(c) @ self.ses.inp.weight[:, self.cfg.dim :].T  # HRNN All
            s = torch.where(real[:, t, None], self.ses.step(gi, h_prev), s)  # padding leaves s as it was
            outs.append(s)
        return self.drop_out(torch.stack(outs, dim=1))  # (B, L, H)

    def user_vector(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., H[+1]): append the constant 1 that multiplies the item bias."""
        if self.item_bias is None:
            return h
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

    def forward(self, item_seq: torch.Tensor, time_seq: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # An exported graph is the loop unrolled over its input length: pad to exactly max_len
            # (zeros: padding, which leaves the state untouched) so it takes any shorter history.
            pad = item_seq.new_zeros(item_seq.shape[0], self.max_len)  # (B, max_len)
            item_seq = torch.cat([pad, item_seq], dim=1)[:, -self.max_len :]
            time_seq = torch.cat([pad, time_seq], dim=1)[:, -self.max_len :]
        return self.user_vector(self.hidden(item_seq, time_seq)[:, -1, :])  # (B, H[+1])

    def score(self, item_seq: torch.Tensor, time_seq: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, L) items and times -> (B, N+1) scores over the catalogue (row 0 = padding)."""
        return self(item_seq, time_seq) @ self.item_vectors().T

    def item_vectors(self) -> torch.Tensor:
        if self.item_bias is None:
            return self.item_out.weight  # (N+1, H)
        return torch.cat([self.item_out.weight, self.item_bias[:, None]], dim=1)  # (N+1, H+1): [W_y | b_y]
