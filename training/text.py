"""Item text -> PLM embeddings for UniSRec: tokenizer, encoder, and the per-dataset cache.

Embeddings are computed once per (dataset, encoder, texts) and cached under
$SEQREC_CACHE_DIR/text_emb/ as float32 (N+1, d) with row 0 (padding) = 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.text_encoder import SentenceEncoder, load_sentence_encoder, resolve_encoder_dir

# Re-exported: the service-side text composition lives beside the items-file reader.
from training.data.items import TEXT_FIELDS as TEXT_FIELDS
from training.data.items import compose_item_text as compose_item_text
from training.data.preprocess import SeqData
from training.data.registry import default_cache_dir

MAX_TOKENS = 128  # item texts are short (Office: median 93 chars); longer ones are truncated


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
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths: less padding
        for start in range(0, len(texts), batch_size):
            if progress and start and start % (batch_size * 50) == 0:
                print(f"item text: {start}/{len(texts)} encoded", file=sys.stderr, flush=True)
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
    # Once per catalogue and encoder, then cached: say so, it can take minutes on a CPU.
    t0 = time.perf_counter()
    print(f"item text: encoding {len(texts)} items (once; cached in {cache.parent})", file=sys.stderr, flush=True)
    emb = TextEmbedder(encoder).encode(texts, progress=len(texts) >= 5000)
    print(f"item text: encoded {len(texts)} items in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    table = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb]).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, table)
    os.replace(tmp.name, cache)
    return table


def dataset_text(
    data: SeqData,
    items_file: Path | None = None,
    data_dir: Path | None = None,
    name: str | None = None,
    allow_missing: bool = False,
) -> dict[str, str]:
    """Item text for a prepared dataset: an explicit items file, else the items file its recipe
    names, else the named dataset's reader (`name` overrides the dataset's own name, for derived
    splits). Refuses text that covers under half the catalogue unless `allow_missing`, and says
    on stderr how many items got text."""
    import sys

    from training.data import DatasetError, item_text
    from training.data.files import FileOptions, read_item_text_generic
    from training.data.items import MIN_TEXT_FRACTION, check_text_coverage

    source = data.meta.get("source") or {}
    min_fraction = MIN_TEXT_FRACTION
    if items_file is not None:
        text = read_item_text_generic(Path(items_file))
        where = Path(items_file).name
    else:
        try:
            text = item_text(name or data.name.split("-sessions-")[0], data_dir, None if name else data.meta)
        except DatasetError as exc:
            raise DatasetError(f"UniSRec needs item text: {exc} (or pass --set task.items_file=PATH)") from None
        if source.get("kind") == "files":
            opts = FileOptions.from_dict(source["options"])
            where = Path(opts.items_file or "").name
            allow_missing = allow_missing or opts.allow_missing_text
            min_fraction = opts.min_text_fraction
        else:
            where = f"dataset {name or data.name}"
    cov = check_text_coverage(data.item_ids, text, where, min_fraction, allow_missing)
    print(cov.summary(where), file=sys.stderr, flush=True)
    return text
