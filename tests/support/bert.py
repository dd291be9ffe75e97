"""A tiny random BERT directory in the Hugging Face layout: UniSRec's text encoder in seconds, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from models.text_encoder import BertConfig, SentenceEncoder, default_encoder_dir

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def hf_state(model: SentenceEncoder) -> dict[str, torch.Tensor]:
    """The tiny encoder's weights under Hugging Face BertModel names (what a real dir holds)."""
    s = model.state_dict()
    out = {
        "embeddings.word_embeddings.weight": s["word.weight"],
        "embeddings.position_embeddings.weight": s["pos.weight"],
        "embeddings.token_type_embeddings.weight": s["tok_type.weight"],
        "embeddings.LayerNorm.weight": s["emb_ln.weight"],
        "embeddings.LayerNorm.bias": s["emb_ln.bias"],
    }
    names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_ln": "attention.output.LayerNorm",
        "inter": "intermediate.dense",
        "out": "output.dense",
        "out_ln": "output.LayerNorm",
    }
    for i in range(model.cfg.num_hidden_layers):
        for local, hf in names.items():
            for p in ("weight", "bias"):
                out[f"encoder.layer.{i}.{hf}.{p}"] = s[f"layers.{i}.{local}.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


def write_tiny_bert(d: Path, seed: int = 0) -> Path:
    """config.json + model.safetensors (random weights, std 0.2) + the real tokenizer.json, into d."""
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    enc = SentenceEncoder(BertConfig(**TINY, max_position_embeddings=160))
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.2)
    save_file(hf_state(enc), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "bert", **TINY, "max_position_embeddings": 160}))
    shutil.copy(default_encoder_dir() / "tokenizer.json", d / "tokenizer.json")
    return d
