"""Item text -> PLM embeddings for UniSRec: tokenizer, encoder, and the per-dataset cache.

Embeddings are computed once per (dataset, encoder, texts) and cached under
$SEQREC_CACHE_DIR/text_emb/ as float32 (N+1, d) with row 0 (padding) = 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.text_encoder import SentenceEncoder, load_sentence_encoder, resolve_encoder_dir
from training.data.preprocess import SeqData
from training.data.registry import default_cache_dir

MAX_TOKENS = 128  # item texts are short (Office: median 93 chars); longer ones are truncated
# How the service builds a new item's text from POST /items fields: the same shape as the
# Office training text (title, category, brand joined by spaces).
TEXT_FIELDS = ("title", "categories", "brand", "description")


def compose_item_text(fields: dict[str, object]) -> str:
    """title + categories + brand + description, space-joined (lists joined by spaces)."""
    parts: list[str] = []
    for key in TEXT_FIELDS:
        v = fields.get(key)
        if isinstance(v, list | tuple):
            v = " ".join(str(x) for x in v if x)
        if v:
            parts.append(str(v).strip())
    return " ".join(parts)


def load_tokenizer(encoder_dir: Path, max_tokens: int = MAX_TOKENS):
    """The `tokenizers` fast tokenizer of the encoder, truncating to max_tokens."""
    from tokenizers import Tokenizer

    path = encoder_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{encoder_dir}: no tokenizer.json (the `tokenizers` format is required)")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_tokens)
    tok.no_padding()
    return tok


class TextEmbedder:
    """Batch text -> (B, d) float32 sentence embeddings with the eager PyTorch encoder."""

    def __init__(self, encoder: str | Path | None = None, max_tokens: int = MAX_TOKENS) -> None:
        self.dir = resolve_encoder_dir(encoder)
        self.model: SentenceEncoder = load_sentence_encoder(self.dir)
        self.tokenizer = load_tokenizer(self.dir, max_tokens)
        self.max_tokens = max_tokens

    @property
    def dim(self) -> int:
        return self.model.cfg.hidden_size

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) input_ids and attention_mask, right-padded with 0 to the longest text."""
        enc = self.tokenizer.encode_batch(list(texts))
        T = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), T), np.int64)
        mask = np.zeros((len(enc), T), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths: less padding
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = self.tokenize([texts[i] for i in idx])
            out[idx] = self.model(torch.as_tensor(ids), torch.as_tensor(mask)).numpy()
        return out


def encoder_key(encoder: str | Path | None) -> str:
    """Short stable key of an encoder directory (its config + weight file sizes)."""
    d = resolve_encoder_dir(encoder)
    h = hashlib.sha256((d / "config.json").read_bytes())
    for f in ("model.safetensors", "pytorch_model.bin"):
        if (d / f).is_file():
            h.update(f"{f}:{(d / f).stat().st_size}".encode())
    return f"{d.name if d.name != 'model' else d.parent.name}-{h.hexdigest()[:10]}"


def item_texts(data: SeqData, text: dict[str, str]) -> list[str]:
    """Text of each catalogue item in index order; an item without text falls back to its id."""
    return [text.get(i, str(i)) for i in data.item_ids]


def item_text_embeddings(
    data: SeqData,
    text: dict[str, str],
    encoder: str | Path | None = None,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """(N+1, d) float32 PLM embeddings of every item's text; row 0 = padding = 0. Cached.

    The cache key is the encoder + a digest of the catalogue's texts in index order, so a
    derived dataset with the same catalogue (e.g. the cold-start training split) reuses it.
    """
    texts = item_texts(data, text)
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]
    cache = (cache_dir or default_cache_dir()) / "text_emb" / f"{encoder_key(encoder)}-{digest}.npy"
    if cache.is_file():
        return np.load(cache)
    emb = TextEmbedder(encoder).encode(texts)
    table = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb]).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, table)
    os.replace(tmp.name, cache)
    return table


def dataset_text(
    data: SeqData, items_file: Path | None = None, data_dir: Path | None = None, name: str | None = None
) -> dict[str, str]:
    """Item text for a prepared dataset: the named dataset's reader (`name` overrides the
    dataset's own name, for derived splits), or a generic items file."""
    from training.data import DatasetError, item_text
    from training.data.readers import read_item_text_generic

    if items_file is not None:
        return read_item_text_generic(Path(items_file))
    try:
        return item_text(name or data.name, data_dir)
    except DatasetError as exc:
        raise DatasetError(f"{exc}; UniSRec needs item text: pass an items file (--set task.items_file=PATH)") from None
