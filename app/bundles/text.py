"""A bundle that knows items by their text (UniSRec): new items are encoded at serving time.

The manifest's `text` section declares three more graphs next to model.onnx:
  tokenizer.json + text_encoder.onnx  text -> PLM embedding (B, d_t)
  adaptor.onnx                        PLM embedding -> unit item vector (B, D)
  seq_encoder.onnx                    history item vectors (B, L, D) + mask (B, L) -> user vector (B, D)
User vectors are computed with seq_encoder over a growing vector table (item_vectors.npy +
rows added online), so a history that contains a brand-new item is scored like any other.
For catalogue-only histories this equals model.onnx (checked at load time).

Items registered online can also be removed (DELETE /items): a removed item leaves the id map
(histories no longer use it) and its label is excluded from every search; its row stays
allocated, so labels never move. `encoding_key` names what an item's vector depends on (the
text graphs, tokenizer and compose rule), so vectors can be shared between processes that load
the same bundle version (app/serving/catalogue.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.bundles.bundle import Bundle
from app.bundles.index import TopKIndex
from app.bundles.manifest import BundleError, Manifest
from app.bundles.onnx import ThreadedSessions
from app.bundles.onnx import ort_session as _session
from app.bundles.spaces import OUTPUT_SPACE


class WithoutRemoved:
    """A top-k index that never returns removed labels (faiss HNSW cannot delete, so every
    index kind is filtered the same way: removed labels join each query's exclusion list)."""

    def __init__(self, inner: TopKIndex) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.removed = np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:  # e.g. ExactIndex.table for callers that read it
        return getattr(self.inner, name)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.inner.add(labels, vectors)

    def search(
        self, query: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.removed):
            return self.inner.search(query, k, exclude)
        rows = len(np.asarray(query).reshape(-1, self.dim))
        if exclude is None:
            exclude = [self.removed] * rows
        else:
            exclude = [np.concatenate([np.asarray(e, np.int64), self.removed]) for e in exclude]
        return self.inner.search(query, k, exclude)


def compose_text(item: dict[str, Any], compose: dict[str, Any]) -> str:
    """A new item's text, built as the manifest's `text.compose` says (the training text's shape):
    the non-empty fields in the declared order, lists joined by spaces, then joined by `separator`."""
    parts: list[str] = []
    for field in compose.get("fields", ["title"]):
        v = item.get(field)
        if isinstance(v, list | tuple):
            v = " ".join(str(x).strip() for x in v if x and str(x).strip())
        if v is not None and str(v).strip():
            parts.append(str(v).strip())
    return str(compose.get("separator", " ")).join(parts)


class TextBundle(Bundle):
    def __init__(self, path: Path, manifest: Manifest, ann_threshold: int) -> None:
        if manifest.text is None:
            raise BundleError(f"{path}: the manifest has no text section")
        text = manifest.text.model_dump()
        try:
            from tokenizers import Tokenizer

            self.text_meta = text
            self.compose: dict[str, Any] = text.get("compose", {})
            te, ada, seq = text["text_encoder"], text["adaptor"], text["seq_encoder"]
            self.tokenizer = Tokenizer.from_file(str(path / text["tokenizer"]))
            self.tokenizer.enable_truncation(int(text.get("max_tokens", 128)))
            self.tokenizer.no_padding()
            self.te_session = _session(path / te["file"])
            self.te_inputs: list[str] = list(te["inputs"])  # [input_ids, attention_mask]
            self.te_output: str = te["output"]
            self.ada_session = _session(path / ada["file"])
            self.ada_input: str = ada["input"]
            self.ada_output: str = ada["output"]
            self.seq_session = _session(path / seq["file"])
            self.seq_sessions = ThreadedSessions(path / seq["file"], self.seq_session)
            self.seq_inputs: list[str] = list(seq["inputs"])  # [item_vecs (B,L,D) float32, mask (B,L) int64]
            self.seq_output: str = seq["output"]
        except (KeyError, TypeError) as exc:
            raise BundleError(f"manifest text section is incomplete: {exc!r}") from exc
        if len(self.te_inputs) != 2 or len(self.seq_inputs) != 2:
            raise BundleError("text section: text_encoder and seq_encoder must each declare two inputs")
        super().__init__(path, manifest, ann_threshold)
        self.index = WithoutRemoved(self.index)
        # Similar items must not return removed items either.
        space = self.spaces[OUTPUT_SPACE]
        space.index = WithoutRemoved(space.index)
        # Items added at serving time (the only ones that can be removed) -> hash of the text they were
        # encoded from (set by app/serving/catalogue.py), so a re-registered item with a new text is re-encoded.
        self.online: dict[str, str] = {}
        files = manifest.files
        what = {f: files.get(f) for f in (te["file"], ada["file"], text["tokenizer"])}
        self.encoding_key = hashlib.sha256(json.dumps([what, self.compose], sort_keys=True).encode()).hexdigest()[:16]

    @property
    def takes_text(self) -> bool:
        return True

    def remove_items(self, ids: Sequence[str]) -> list[str]:
        """Stop serving items added online; returns those that were held. Catalogue items stay."""
        gone = [i for i in dict.fromkeys(ids) if i in self.online]
        labels = [self.index_of.pop(i) for i in gone]
        for i in gone:
            del self.online[i]
        if labels:
            for idx in (self.index, self.spaces[OUTPUT_SPACE].index):
                assert isinstance(idx, WithoutRemoved)
                idx.removed = np.concatenate([idx.removed, np.asarray(labels, np.int64)])
        return gone

    def _check_runs(self) -> None:
        # self._table (Bundle): row 0 = padding (zeros), row r = item index r, grown by add_items.
        n = len(self._table) - 1
        if self.needs_times:  # the sequence-encoder path (items posted as text) has no time input
            raise BundleError(f"text bundle {self.name} declares event times, which its sequence encoder cannot read")
        super()._check_runs()
        # The seq-encoder path must agree with model.onnx on catalogue histories.
        probe = np.arange(1, min(n, self.max_len) + 1, dtype=np.int64)
        ref = self.session.run([self.output_name], {self.input_name: probe[None]})[0]
        got = self.user_vectors([probe])
        if not np.allclose(got, ref, atol=1e-4):
            raise BundleError(f"seq_encoder.onnx disagrees with model.onnx (max {np.abs(got - ref).max():.2e})")
        if self.encode_texts(["probe"]).shape != (1, self.dim):
            raise BundleError("text_encoder.onnx -> adaptor.onnx does not give (1, dim) item vectors")

    def user_vectors(
        self, histories: Sequence[np.ndarray], times: Sequence[np.ndarray] | None = None, threads: int = 1
    ) -> np.ndarray:
        # `times` is unused: _check_runs refuses a text bundle that reads them.
        seqs = [h[-self.max_len :] for h in histories]
        length = max(1, max(len(s) for s in seqs))
        batch = np.full((len(seqs), length), self.padding_index, dtype=np.int64)  # (B, L) left-padded
        for row, s in zip(batch, seqs, strict=True):
            if len(s):
                row[length - len(s) :] = s
        return self.padded_vectors(batch, threads)

    def padded_vectors(self, batch: np.ndarray, threads: int = 1) -> np.ndarray:
        real = batch != self.padding_index  # (B, L)
        vecs = self._table.take(np.where(real, batch, 0))  # (B, L, D), padding = row 0 (zeros)
        mask = real.astype(np.int64)  # (B, L)
        feeds = {self.seq_inputs[0]: vecs, self.seq_inputs[1]: mask}
        out: np.ndarray = self.seq_sessions.get(threads).run([self.seq_output], feeds)[0]
        return out

    def item_text(self, item: dict[str, Any]) -> str:
        return compose_text(item, self.compose)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (B, D) unit item vectors: tokenizer -> text_encoder.onnx -> adaptor.onnx."""
        enc = self.tokenizer.encode_batch(list(texts))
        T = max(1, max(len(e.ids) for e in enc))
        ids = np.zeros((len(enc), T), np.int64)  # (B, T) right-padded, like training
        mask = np.zeros((len(enc), T), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        emb = self.te_session.run([self.te_output], {self.te_inputs[0]: ids, self.te_inputs[1]: mask})[0]
        vec = self.ada_session.run([self.ada_output], {self.ada_input: emb.astype(np.float32)})[0]
        out: np.ndarray = vec.astype(np.float32)
        return out

    def add_items(self, ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        idx = super().add_items(ids, vectors)  # grows self._table, the index and the item spaces
        self.online.update(dict.fromkeys(ids, ""))
        return idx
