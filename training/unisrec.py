"""UniSRec around the shared trainer: model setup from dataset text, multi-domain
pre-training, and the extra bundle graphs (seq encoder, adaptor, text encoder).

Pre-training (Hou et al. 2022, Sec. 3.2) on several domains at once, no item ids:
  L_SI = -log exp(<s_j, v_j>/tau) / sum_{j' in batch} exp(<s_j, v_j'>/tau)        sequence-item (Eq. 5)
  L_SS = -log exp(<s_j, s~_j>/tau) / sum_{j' in batch} exp(<s_j, s~_j'>/tau)      sequence-sequence (Eq. 6)
  L    = L_SI + lambda L_SS
where s~ is the sequence encoded from an augmented view: item drop (remove items) and word
drop (here: dropout on the PLM embedding dimensions, a cheap proxy for dropping words, since
item text embeddings are precomputed once).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.layers import SeqRecModel
from models.unisrec import UniSRec, UniSRecConfig
from training.batching import pad_left
from training.budget import Budget, StopRequest
from training.config import ContrastiveConfig, TrainConfig
from training.data.preprocess import SeqData, leave_one_out
from training.errors import ExportError
from training.loop import Optimisation, TaskLoss, run_epoch
from training.optim import adamw
from training.text import MAX_TOKENS, TEXT_FIELDS, TextEmbedder, dataset_text, item_text_embeddings

ONNX_OPSET = 17
# Parameters a pre-trained checkpoint hands to fine-tuning: all but the per-catalogue tables.
_PER_CATALOGUE = ("text_emb", "item_emb.", "skip_mean", "skip_proj", "trained")


def _transferable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(_PER_CATALOGUE)}


def load_pretrained(model: UniSRec, path: str | Path) -> list[str]:
    """Copy the adaptor + transformer from a `seqrec pretrain` checkpoint; returns the loaded keys."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    if ckpt.get("kind") != "unisrec-pretrain":
        raise ValueError(f"{path}: not a `seqrec pretrain` checkpoint")
    src = _transferable(ckpt["state_dict"])
    own = model.state_dict()
    bad = [k for k, v in src.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(
            f"{path}: pre-trained shapes do not fit this model ({bad[:3]}...): "
            f"pre-trained config {ckpt['model_config']}"
        )
    model.load_state_dict(src, strict=False)
    return sorted(src)


def setup_unisrec(model: SeqRecModel, data: SeqData, tc: TrainConfig, x: ContrastiveConfig) -> None:
    """Fill the text-embedding table from the dataset's item text, load task.init, freeze on request."""
    assert isinstance(model, UniSRec)
    text = dataset_text(data, Path(x.items_file) if x.items_file else None, name=x.text_from)
    table = item_text_embeddings(data, text, model.cfg.text_encoder or None)
    if table.shape != tuple(model.text_emb.shape):
        raise ValueError(f"text embeddings {table.shape} do not fit the model {tuple(model.text_emb.shape)}")
    with torch.no_grad():
        model.text_emb.copy_(torch.as_tensor(table))
    if x.init:
        loaded = load_pretrained(model, x.init)
        print(
            f"init: {len(loaded)} pre-trained tensors (MoE adaptor + transformer) from {x.init}; "
            f"item tables come from this catalogue's text",
            file=sys.stderr,
            flush=True,
        )
    if model.cfg.text_skip:
        # Fitted on the items the training data holds: a held-out (cold) item's text is not
        # known at training time.
        seen = torch.as_tensor(np.unique(data.items).astype(np.int64))
        model.fit_text_channel(model.text_emb[seen])
    # Items of the training part (leave-one-out) are the ones the model learns; the rest are
    # new to it, like items registered at serving time (the new-item head reads this flag).
    trained = np.zeros(model.num_items + 1, np.float32)
    for s in leave_one_out(data).train:
        trained[s] = 1.0
    with torch.no_grad():
        model.trained.copy_(torch.as_tensor(trained))
    if model.cfg.freeze_encoder:
        for p in model.sequence_params():
            p.requires_grad_(False)


# --------------------------------------------------------------------------- pre-training


@dataclass
class PretrainConfig:
    datasets: tuple[str, ...] = ("ml-1m", "ml-100k")
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    lam: float = 1e-3  # weight of the sequence-sequence loss
    item_drop: float = 0.2
    word_drop: float = 0.2
    max_minutes: float | None = None
    seed: int = 42


def _augment(seq: np.ndarray, rng: np.random.Generator, drop: float) -> np.ndarray:
    """Item drop: remove each item with probability `drop`, keeping at least one."""
    keep = rng.random(len(seq)) >= drop
    if not keep.any():
        keep[rng.integers(len(seq))] = True
    return seq[keep]


class PretrainTask:
    """The pre-training objective as a task of the shared loop (training/loop.py): `batches` draws
    one random (prefix -> next item) sample per sequence per epoch and its item-dropped view,
    `loss` is L_SI + lambda L_SS over in-batch negatives."""

    def __init__(self, pc: PretrainConfig, max_len: int, tau: float) -> None:
        self.pc, self.max_len, self.tau = pc, max_len, tau

    def num_batches(self, seqs: list[np.ndarray], batch_size: int) -> int:
        return -(-len(seqs) // batch_size)

    def batches(
        self, seqs: list[np.ndarray], batch_size: int, rng: np.random.Generator
    ) -> Iterator[dict[str, torch.Tensor]]:
        order = rng.permutation(len(seqs))
        for start in range(0, len(order), batch_size):
            rows = [seqs[i] for i in order[start : start + batch_size]]
            cut = [int(rng.integers(1, len(s))) for s in rows]
            hist = [s[max(0, c - self.max_len) : c] for s, c in zip(rows, cut, strict=True)]
            yield {
                "hist": torch.as_tensor(pad_left(hist)),  # (B, L)
                "target": torch.as_tensor([int(s[c]) for s, c in zip(rows, cut, strict=True)]),  # (B,)
                "aug": torch.as_tensor(pad_left([_augment(h, rng, self.pc.item_drop) for h in hist])),  # (B, L')
            }

    def loss(self, model: UniSRec, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, tgt, aug = batch["hist"], batch["target"], batch["aug"]
        # Adapt the (global) catalogue once per step and gather from it: N items through the
        # MoE instead of B*L history tokens (ML-1M histories are long).
        table = model.item_table()  # (N+1, D)
        s = model.encode_hidden(table[x], x != 0)[:, -1, :]  # (B, D)
        v = table[tgt]  # (B, D)
        # In-batch negatives (Eq. 5); the same target item twice in a batch is not a negative.
        logits = s @ v.T / self.tau  # (B, B)
        same = (tgt[:, None] == tgt[None, :]) & ~torch.eye(len(tgt), dtype=torch.bool)
        l_si = F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(len(tgt)))
        # Word-drop view (Eq. 6): the catalogue re-adapted from dropped-out PLM embeddings.
        aug_table = F.normalize(model.adapt_raw(F.dropout(model.text_emb, self.pc.word_drop)), dim=-1)  # (N+1, D)
        s_aug = model.encode_hidden(aug_table[aug], aug != 0)[:, -1, :]  # (B, D)
        l_ss = F.cross_entropy(s @ s_aug.T / self.tau, torch.arange(len(tgt)))
        return l_si + self.pc.lam * l_ss


def pretrain(
    pc: PretrainConfig,
    out: Path,
    model_overrides: dict[str, Any] | None = None,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    log: bool = True,
) -> Path:
    """Pre-train adaptor + transformer over the union of several text domains; writes out/pretrained.pt.

    The steps are the shared loop's (training/loop.py), so the budget (`max_minutes`) and Ctrl-C
    stop it at the next step, as they stop `seqrec train`; `log`: a progress line a minute."""
    from training.data import load_dataset

    torch.manual_seed(pc.seed)
    rng = np.random.default_rng(pc.seed)
    tables: list[np.ndarray] = []
    seqs: list[np.ndarray] = []
    offset = 0
    stats = []
    cfg_kw = {**(model_overrides or {})}
    for name in pc.datasets:
        data = load_dataset(name, data_dir, cache_dir)
        table = item_text_embeddings(data, dataset_text(data, None, data_dir), cfg_kw.get("text_encoder") or None)
        tables.append(table[1:])
        # Training part of each leave-one-out split only: pre-training never sees any held-out item.
        seqs.extend(s + offset for s in leave_one_out(data).train if len(s) >= 2)
        offset += data.num_items
        stats.append(data.stats())
    text = np.concatenate([np.zeros((1, tables[0].shape[1]), np.float32), *tables])  # one global item space
    cfg = UniSRecConfig(num_items=offset, mode="inductive", **cfg_kw)
    model = UniSRec(cfg)
    with torch.no_grad():
        model.text_emb.copy_(torch.as_tensor(text))
    if cfg.text_skip:
        model.fit_text_channel(model.text_emb[1:])

    task = PretrainTask(pc, cfg.max_len, cfg.temperature)
    params = list(model.parameters())
    steps = Optimisation(TaskLoss(model, task), adamw(params, lr=pc.lr), params, grad_clip=1.0)
    budget = Budget(pc.max_minutes)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pretrain_metrics.jsonl").open("w") as metrics, StopRequest() as request:
        for epoch in range(1, pc.epochs + 1):
            model.train()
            planned = task.num_batches(seqs, pc.batch_size)
            ep = run_epoch(
                steps,
                task.batches(seqs, pc.batch_size, rng),
                planned,
                epoch,
                lambda _done, _planned: request.signal or ("max_minutes" if budget.spent() else None),
                log=log,
            )
            row = {"epoch": epoch, "loss": ep.loss, "elapsed_seconds": round(budget.elapsed(), 1), "steps": ep.steps}
            if ep.partial:
                row["partial"] = True
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            print(json.dumps(row), file=sys.stderr, flush=True)
            _save_pretrained(out / "pretrained.pt", model, pc, stats, epoch)
            if ep.halt is not None or budget.spent():
                break
    return out / "pretrained.pt"


def _save_pretrained(path: Path, model: UniSRec, pc: PretrainConfig, stats: list, epoch: int) -> None:
    tmp = path.with_suffix(".tmp")
    cfg = model.cfg.to_dict()
    torch.save(
        {
            "format": 1,
            "kind": "unisrec-pretrain",
            "model_config": cfg,
            "pretrain_config": asdict(pc),
            "datasets": stats,
            "epoch": epoch,
            "state_dict": _transferable({k: v.detach().cpu() for k, v in model.state_dict().items()}),
        },
        tmp,
    )
    os.replace(tmp, path)


# --------------------------------------------------------------------------- export


class _SeqEncoderGraph(nn.Module):
    def __init__(self, m: UniSRec) -> None:
        super().__init__()
        self.m = m

    def forward(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.m.encode(item_vecs, mask)


class _AdaptorGraph(nn.Module):
    def __init__(self, m: UniSRec) -> None:
        super().__init__()
        self.m = m

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:
        return self.m.adapt(text_emb)


def _onnx(module: nn.Module, args: tuple, path: Path, inputs: list[str], output: str, axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


PROBE_TEXTS = (
    "Swingline Stapler, Heavy Duty, 160 Sheets, Black Staplers Swingline",
    "A brand-new item nobody has interacted with: recycled paper notebook, 5 pack",
    "x",
)


def export_unisrec_extra(model: SeqRecModel, out: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """Write seq_encoder.onnx, adaptor.onnx, text_encoder.onnx, tokenizer.json; check each
    against eager PyTorch; return the manifest's `text` section."""
    assert isinstance(model, UniSRec)
    model.eval()
    cfg = model.cfg
    D = cfg.dim + model.head_dim  # item-row width: the vector table's, the adaptor's output
    _onnx(
        _SeqEncoderGraph(model).eval(),  # eval: export restores the wrapper's mode onto the model
        (torch.randn(2, 4, D), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])),
        out / "seq_encoder.onnx",
        ["item_vecs", "mask"],
        "user_vec",
        {"item_vecs": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"}, "user_vec": {0: "batch"}},
    )
    _onnx(
        _AdaptorGraph(model).eval(),
        (torch.randn(2, cfg.text_dim),),
        out / "adaptor.onnx",
        ["text_emb"],
        "item_vec",
        {"text_emb": {0: "batch"}, "item_vec": {0: "batch"}},
    )
    embedder = TextEmbedder(cfg.text_encoder or None)
    ids, mask = embedder.tokenize(list(PROBE_TEXTS))
    _onnx(
        embedder.model,
        (torch.as_tensor(ids), torch.as_tensor(mask)),
        out / "text_encoder.onnx",
        ["input_ids", "attention_mask"],
        "text_emb",
        {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "text_emb": {0: "batch"}},
    )
    embedder.tokenizer.save(str(out / "tokenizer.json"))
    model.eval()
    parity, end_to_end = unisrec_parity(model, embedder, out)
    if max(parity.values()) > 1e-4 or end_to_end > NEW_ITEM_END_TO_END_TOL:
        raise ExportError(f"UniSRec graphs disagree with eager PyTorch: {parity}, new item end to end {end_to_end}")
    return {
        "text": {
            "tokenizer": "tokenizer.json",
            "max_tokens": MAX_TOKENS,
            "text_encoder": {
                "file": "text_encoder.onnx",
                "inputs": ["input_ids", "attention_mask"],
                "input_dtype": "int64",
                "output": "text_emb",
                "dim": embedder.dim,
                "pooling": embedder.model.cfg.pooling,
                "normalized": embedder.model.cfg.normalize,
                "source": str(embedder.dir),
            },
            "adaptor": {"file": "adaptor.onnx", "input": "text_emb", "output": "item_vec", "dim": D},
            "seq_encoder": {
                "file": "seq_encoder.onnx",
                "inputs": ["item_vecs", "mask"],
                "input_dtypes": ["float32", "int64"],
                "output": "user_vec",
                "note": "item_vecs (B, L, dim) left-padded, newest last: rows of item_vectors.npy for "
                "catalogue items, adaptor(text_encoder(text)) for new ones; mask (B, L) 1 = real item",
            },
            "compose": {
                "fields": list(TEXT_FIELDS),
                "separator": " ",
                "lists": "joined by spaces",
                "note": "new item text = non-empty fields in this order; the same shape as training text",
            },
            "mode": cfg.mode,
            "item_vectors_normalized": not model.head_dim,
            "score": "cosine (= inner product of unit vectors)"
            if not model.head_dim
            else "cosine of the first dim_model dims + new-item head: rows [v, t, new], user [s, beta*new*t, 0]",
            "dim_model": cfg.dim,
            "new_item_head": cfg.new_item_head,
            "parity_max_abs_diff": parity,
            "new_item_end_to_end_max_abs_diff": end_to_end,
        }
    }


# A new item's text through both exported graphs (text encoder, then adaptor) vs eager: each
# graph agrees to ~1e-7, but the adaptor's text channel normalises (text - mean) @ P, and probe
# texts lie close to the catalogue mean, so a 1e-7 difference in the text embedding can come out
# ~1e-4 (seen: 1.3e-4 on an AVX512 CPU). That is conditioning, not export error: a looser bound.
NEW_ITEM_END_TO_END_TOL = 1e-3


@torch.no_grad()
def unisrec_parity(model: UniSRec, embedder: TextEmbedder, out: Path) -> tuple[dict[str, float], float]:
    """Max |ONNX - eager| per graph (each on the same input), and for a new item's text through
    both exported graphs chained (ONNX text embedding into the ONNX adaptor)."""
    rng = np.random.default_rng(0)
    table = model.item_vectors()
    worst: dict[str, float] = {}
    enc = _session(out / "seq_encoder.onnx")
    diffs = []
    for n in (1, 3, model.max_len, model.max_len + 5):
        items = torch.as_tensor(pad_left([rng.integers(1, model.num_items + 1, size=k) for k in (n, max(1, n // 2))]))
        vecs, mask = table[items], (items != 0).long()
        ref = model.encode(vecs, mask).numpy()
        got = enc.run(["user_vec"], {"item_vecs": vecs.numpy(), "mask": mask.numpy()})[0]
        diffs.append(float(np.abs(got - ref).max()))
        # and the seq encoder on catalogue vectors agrees with the id-based forward
        diffs.append(float(np.abs(model(items).numpy() - ref).max()))
    worst["seq_encoder"] = max(diffs)
    ada = _session(out / "adaptor.onnx")
    x = model.text_emb[1 : min(model.num_items, 64) + 1]
    worst["adaptor"] = float(np.abs(ada.run(["item_vec"], {"text_emb": x.numpy()})[0] - model.adapt(x).numpy()).max())
    te = _session(out / "text_encoder.onnx")
    ids, mask = embedder.tokenize(list(PROBE_TEXTS))
    onnx_text = te.run(["text_emb"], {"input_ids": ids, "attention_mask": mask})[0]
    eager_text = embedder.encode(list(PROBE_TEXTS))
    worst["text_encoder"] = float(np.abs(onnx_text - eager_text).max())
    new_eager = model.adapt(torch.as_tensor(eager_text)).numpy()
    same_input = ada.run(["item_vec"], {"text_emb": eager_text.astype(np.float32)})[0]
    worst["adaptor_new_text"] = float(np.abs(same_input - new_eager).max())
    chained = ada.run(["item_vec"], {"text_emb": onnx_text})[0]
    return worst, float(np.abs(chained - new_eager).max())
