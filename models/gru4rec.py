"""GRU4Rec: session-based recommendation with recurrent neural networks.

Hidasi et al., ICLR 2016 ("Session-based Recommendations with Recurrent Neural Networks") and
Hidasi & Karatzoglou, CIKM 2018 ("Recurrent Neural Networks with Top-k Gains"). Written from
the papers; the official code is not used.

GRU (Sec. 3 of the 2016 paper), per layer, for input x_t and previous state h_{t-1}:
  z_t = s(W_z x_t + U_z h_{t-1})                 update gate
  r_t = s(W_r x_t + U_r h_{t-1})                 reset gate
  h~_t = tanh(W x_t + U (r_t * h_{t-1}))         candidate
  h_t = (1 - z_t) h_{t-1} + z_t h~_t
x_t is the item's input embedding. With `embedding="shared"` (the "constrained embedding" of the
papers' best settings) the input embedding is the output item table W_y itself, so every item
has one vector that both feeds the GRU and scores it. Scores: r = h_t W_y^T + b_y (an output
bias per item, folded into the item vectors as one extra dimension for serving).

Two ways to run the same network:
  `step(items, h)`     one time step for a batch of sessions: session-parallel training.
  `hidden(item_seq)`   a whole left-padded batch: padded training on user sequences, and serving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.layers import Dropout, SeqRecModel, glorot_init_


@dataclass
class GRU4RecConfig:
    num_items: int
    max_len: int = 200  # history length read at serving / evaluation
    dim: int = 128  # GRU hidden size (= item vector size with the shared embedding)
    num_layers: int = 1
    embedding: str = "shared"  # shared (constrained, W_y feeds the GRU) | separate
    emb_dim: int = 64  # only for embedding="separate"
    dropout_emb: float = 0.0  # dropout on the GRU input
    dropout: float = 0.0  # dropout on the GRU output (before the output layer)
    output_bias: bool = True  # b_y

    def to_dict(self) -> dict:
        return asdict(self)


class GRU4Rec(SeqRecModel):
    def __init__(self, cfg: GRU4RecConfig) -> None:
        super().__init__()
        if cfg.embedding not in ("shared", "separate"):
            raise ValueError(f"embedding must be shared or separate, got {cfg.embedding!r}")
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.num_items = cfg.num_items
        self.item_out = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)  # W_y
        self.item_bias = nn.Parameter(torch.zeros(cfg.num_items + 1)) if cfg.output_bias else None  # b_y
        in_dim = cfg.dim
        self.item_in: nn.Embedding | None = None
        if cfg.embedding == "separate":
            self.item_in = nn.Embedding(cfg.num_items + 1, cfg.emb_dim, padding_idx=0)
            in_dim = cfg.emb_dim
        self.gru = nn.GRU(in_dim, cfg.dim, num_layers=cfg.num_layers, batch_first=True)
        self.drop_in = Dropout(cfg.dropout_emb)
        self.drop_out = Dropout(cfg.dropout)
        self._init()

    def _init(self) -> None:
        glorot_init_(self)  # as in the papers' code descriptions
        with torch.no_grad():
            self.item_out.weight[0].zero_()
            if self.item_in is not None:
                self.item_in.weight[0].zero_()

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        table = self.item_in if self.item_in is not None else self.item_out
        return self.drop_in(table(items))

    def step(self, items: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One session-parallel step. items: (B,), h: (layers, B, H) or None -> out (B, H), new h."""
        x = self.embed(items)[:, None, :]  # (B, 1, E)
        out, h_new = self.gru(x, h)  # (B, 1, H), (layers, B, H)
        return self.drop_out(out[:, 0]), h_new

    def hidden(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded -> (B, L, H): h_t at every position (padding positions: undefined).

        The GRU must start from h_0 = 0 at each row's first real item, so the left-padded rows are
        rotated to right-padded ones (index gathers, exportable to ONNX), run, and rotated back.
        """
        item_seq = item_seq[:, -self.max_len :]
        B, L = item_seq.shape
        n_pad = (item_seq == 0).sum(dim=1, keepdim=True)  # (B, 1)
        idx = torch.arange(L, device=item_seq.device)[None, :]  # (1, L)
        to_right = (idx + n_pad) % L  # (B, L): right-padded position j reads left-padded j + pad
        right = item_seq.gather(1, to_right)  # (B, L), items first, padding after
        out, _ = self.gru(self.embed(right))  # (B, L, H)
        back = (idx - n_pad) % L  # (B, L): inverse rotation
        out = out.gather(1, back[:, :, None].expand(B, L, out.shape[-1]))  # (B, L, H)
        return self.drop_out(out)

    def user_vector(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., H[+1]): append the constant 1 that multiplies the item bias."""
        if self.item_bias is None:
            return h
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.user_vector(self.hidden(item_seq)[:, -1, :])  # (B, H[+1]): state after the newest item

    def item_vectors(self) -> torch.Tensor:
        if self.item_bias is None:
            return self.item_out.weight  # (N+1, H)
        return torch.cat([self.item_out.weight, self.item_bias[:, None]], dim=1)  # (N+1, H+1): [W_y | b_y]

    @property
    def state_shape(self) -> tuple[int, int]:
        """(layers, H): one user's recurrent state, as the step graph carries it."""
        return self.cfg.num_layers, self.cfg.dim


class GRUStep(nn.Module):
    """GRU4Rec advanced from a given state: (state (layers, B, H), items (B, T)) -> (state', user_vec).

    No padding: every row advances by its T items (the serving side calls it per user). From a zero
    state over a whole history it computes what GRU4Rec.forward computes on that history.
    """

    def __init__(self, model: GRU4Rec) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: torch.Tensor, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        out, new_state = m.gru(m.embed(item_seq), state)  # (B, T, H), (layers, B, H)
        return new_state, m.user_vector(m.drop_out(out[:, -1]))  # (layers, B, H), (B, H[+1])
