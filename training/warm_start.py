"""Warm start: begin training from a previous bundle's (or checkpoint's) weights on new data.

Item rows are matched by external item id, never by index: `prepare` numbers items by sorting
their ids, so an item's index moves whenever items are added or removed before it, while its
id does not. For every item-indexed tensor (the embedding tables and output biases below):

- an item present in both keeps its row, copied bit for bit;
- a new item gets the mean of the persisting items' rows (a neutral point of the learned
  space rather than random noise of another scale); a new UniSRec item comes from its text
  through the model's normal setup (the text table is filled from the new data, never
  copied) with a zero id embedding on top, i.e. exactly what serving does for an unseen item;
- an item gone from the data is dropped with its row;
- rows that are not items (padding, BERT4Rec's [mask]) are copied.

Every other weight is copied as is; a shape that differs (another dim, layer count, max_len)
is an error raised before any training starts, as is a source of another model kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# name -> rows after the items that are not items (BERT4Rec's last embedding row is [mask]).
ITEM_TENSORS: dict[str, dict[str, int]] = {
    "sasrec": {"item_emb.weight": 0},
    "bert4rec": {"item_emb.weight": 1, "out_bias": 0},
    "gru4rec": {"item_out.weight": 0, "item_bias": 0, "item_in.weight": 0},
    "unisrec": {"item_emb.weight": 0},
}
# New items of these start from text alone: their id embedding (added to the text vector) is 0.
TEXT_ONLY_NEW: dict[str, set[str]] = {"unisrec": {"item_emb.weight"}}
# Filled from the new data by the model's own setup (UniSRec: text embeddings of every item,
# which items had training interactions): never copied from the source.
FROM_DATA: dict[str, set[str]] = {"unisrec": {"text_emb", "trained"}}


class WarmStartError(ValueError):
    """The source cannot initialise this model (another kind, other shapes, unreadable)."""


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str
    model_config: dict[str, Any]
    item_ids: list[str]
    state_dict: dict[str, torch.Tensor]


@dataclass(frozen=True)
class WarmStartReport:
    source: Path
    kept: int
    added: int
    dropped: int
    tensors: int

    def summary(self) -> str:
        return (
            f"warm start from {self.source}: {self.kept} items kept, {self.added} new (mean init), "
            f"{self.dropped} dropped; {self.tensors} tensors loaded"
        )


def is_warm_start_source(path: Path) -> bool:
    """A bundle directory or a `seqrec train` checkpoint (not a UniSRec pre-training checkpoint)."""
    path = Path(path)
    if path.is_dir():
        return (path / "manifest.json").is_file()
    if not path.is_file():
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return isinstance(ckpt, dict) and "state_dict" in ckpt and "item_ids" in ckpt and ckpt.get("kind") is None


def load_source(path: Path) -> Source:
    path = Path(path)
    try:
        if path.is_dir():
            manifest = json.loads((path / "manifest.json").read_text())
            item_ids = json.loads((path / "item_ids.json").read_text())
            # The bundle's TorchScript module holds every parameter and buffer under the eager names.
            state = dict(torch.jit.load(str(path / "model.ts"), map_location="cpu").state_dict())
            return Source(path, str(manifest["model"]), dict(manifest["model_config"]), list(item_ids), state)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        return Source(path, str(ckpt["model"]), dict(ckpt["model_config"]), list(ckpt["item_ids"]), ckpt["state_dict"])
    except (OSError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
        raise WarmStartError(f"{path}: not a readable bundle or checkpoint ({type(exc).__name__}: {exc})") from None


def model_overrides(source: Source, kind: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The architecture to build: the source's, with explicit overrides on top (checked later)."""
    if source.kind != kind:
        raise WarmStartError(f"{source.path} holds a {source.kind} model; it cannot initialise {kind}")
    cfg = {k: v for k, v in source.model_config.items() if k != "num_items"}
    return {**cfg, **(overrides or {})}


@torch.no_grad()
def apply(model: torch.nn.Module, kind: str, source: Source, item_ids: list[str]) -> WarmStartReport:
    """Copy `source` into `model` (built for `item_ids`, index i <-> item_ids[i - 1])."""
    if source.kind != kind:
        raise WarmStartError(f"{source.path} holds a {source.kind} model; it cannot initialise {kind}")
    own = model.state_dict()
    item_tensors = ITEM_TENSORS.get(kind, {})
    skip = FROM_DATA.get(kind, set())
    old_index = {item: i + 1 for i, item in enumerate(source.item_ids)}
    pairs = [(new, old_index[item]) for new, item in enumerate(item_ids, 1) if item in old_index]
    new_rows = torch.tensor([n for n, _ in pairs], dtype=torch.long)
    old_rows = torch.tensor([o for _, o in pairs], dtype=torch.long)
    added = [n for n, item in enumerate(item_ids, 1) if item not in old_index]
    if not pairs:
        raise WarmStartError(f"{source.path}: no item of the new data is known to it; train from scratch")
    missing = sorted(set(own) - set(source.state_dict) - skip)
    if missing:
        raise WarmStartError(f"{source.path}: lacks {', '.join(missing[:5])} (another model configuration)")
    out: dict[str, torch.Tensor] = {}
    for name, target in own.items():
        if name in skip:
            continue
        src = source.state_dict[name]
        if name in item_tensors:
            tail = item_tensors[name]
            n_old = len(source.item_ids) + 1 + tail
            if src.shape[0] != n_old or src.shape[1:] != target.shape[1:]:
                raise WarmStartError(
                    f"{name}: source {tuple(src.shape)} does not fit {tuple(target.shape)} (another dimension?)"
                )
            t = target.clone()
            t[0] = src[0]  # padding
            t[new_rows] = src[old_rows]
            if added:
                zero = name in TEXT_ONLY_NEW.get(kind, set())
                t[torch.tensor(added)] = 0 if zero else src[old_rows].mean(0).to(t.dtype)
            if tail:
                t[-tail:] = src[-tail:]
            out[name] = t
        elif src.shape != target.shape:
            raise WarmStartError(
                f"{name}: source {tuple(src.shape)} does not fit {tuple(target.shape)}; "
                f"the source was built with {source.model_config}"
            )
        else:
            out[name] = src.to(target.dtype)
    model.load_state_dict(out, strict=False)
    return WarmStartReport(source.path, len(pairs), len(added), len(source.item_ids) - len(pairs), len(out))


@torch.no_grad()
def shrink_toward_init(source: Source, keep: float, seed: int = 0) -> Source:
    """The source's weights pulled toward a fresh initialisation: keep * source + (1 - keep) * init.

    A model trained to convergence and trained further on data it has mostly seen overfits within
    a few epochs and settles below what a fresh run reaches ("warm-starting" gap; Ash & Adams,
    *On warm-starting neural network training*, 2020). Moving every weight part of the way back
    to a fresh initialisation of the same architecture keeps most of what was learned (the
    directions of the item rows, the attention patterns) while restoring the gradients' room to
    move. keep = 1 is the plain warm start, keep = 0 a fresh start.
    """
    if not 0.0 <= keep <= 1.0:
        raise WarmStartError(f"keep must be in [0, 1], got {keep}")
    from training.zoo import build_model

    torch.manual_seed(seed)
    cfg = {k: v for k, v in source.model_config.items() if k != "num_items"}
    fresh = build_model(source.kind, len(source.item_ids), cfg).state_dict()
    state = {}
    for name, w in source.state_dict.items():
        f = fresh.get(name)
        if f is None or not w.is_floating_point() or f.shape != w.shape:
            state[name] = w
        else:
            state[name] = keep * w + (1.0 - keep) * f.to(w.dtype)
    return Source(source.path, source.kind, source.model_config, source.item_ids, state)


def save_source(source: Source, path: Path) -> Path:
    """A `seqrec train` checkpoint of `source` that `--init` reads (kind, config, item ids, weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": source.kind,
            "model_config": source.model_config,
            "item_ids": source.item_ids,
            "state_dict": source.state_dict,
        },
        path,
    )
    return path
