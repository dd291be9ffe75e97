"""The model registry: every trainable model, its config, its task and its defaults.

Adding a model = one entry here; the CLI, trainer, evaluator and exporter use nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bert4rec import BERT4Rec, BERT4RecConfig
from models.gru4rec import GRU4Rec, GRU4RecConfig
from models.layers import SeqRecModel
from models.sasrec import SASRec, SASRecConfig
from models.unisrec import UniSRec, UniSRecConfig
from training.cloze import ClozeTask
from training.config import TrainConfig
from training.gru4rec_tasks import PaddedNextItemTask, SessionParallelTask
from training.tasks import ContrastiveNextItemTask, NextItemTask, Task

# (model, prepared dataset, train config) -> None: fills dataset-dependent state before training
# (e.g. UniSRec's item text embeddings, a pre-trained initialisation).
SetupFn = Callable[[SeqRecModel, Any, TrainConfig], None]
# (model, bundle temp dir, checkpoint) -> extra manifest entries; writes extra bundle files.
ExportExtraFn = Callable[[SeqRecModel, Path, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: type
    model_cls: Callable[[Any], SeqRecModel]
    make_task: Callable[[Any, TrainConfig, np.ndarray], Task]  # (model config, train config, popularity)
    model_defaults: dict[str, Any] = field(default_factory=dict)
    train_defaults: TrainConfig = field(default_factory=TrainConfig)
    setup: SetupFn | None = None
    export_extra: ExportExtraFn | None = None


def negative_weights(extra: dict[str, Any], popularity: np.ndarray) -> torch.Tensor | None:
    """Sampled-softmax negatives drawn ~ supp^alpha (None = uniform), as GRU4Rec's extra negatives.

    train.neg_alpha sets alpha (0 uniform, 1 popularity); train.pop_negatives=true means alpha 1.
    train.neg_uniform=u in [0, 1) draws from the mixture u * uniform + (1 - u) * supp^alpha: the
    logQ correction then uses the mixture's q, which is at least u / N for every item. Why: with
    alpha > 0 alone, BERT4Rec on Beauty collapses (alpha 1 and 0.5 both) as rare items, almost
    never drawn, keep inflating the shared input/output table; the uniform share pushes each of
    them down every few steps while the rest of the draw still brings the hard, popular ones.
    """
    alpha = float(extra.get("neg_alpha", 1.0 if extra.get("pop_negatives") else 0.0))
    if alpha < 0:
        raise ValueError(f"train.neg_alpha must be >= 0, got {alpha}")
    u = float(extra.get("neg_uniform", 0.0))
    if not 0.0 <= u < 1.0:
        raise ValueError(f"train.neg_uniform must be in [0, 1), got {u}")
    if alpha == 0:
        return None  # uniform already; a mixture with uniform is uniform
    w = torch.as_tensor(popularity, dtype=torch.float64) ** alpha  # (N+1,), w[0] = 0 (padding)
    if u == 0:
        return w.float()
    q = (1 - u) * w / w.sum()
    q[1:] += u / (len(q) - 1)  # the padding row stays impossible
    return q.float()


def _sasrec_task(cfg: SASRecConfig, tc: TrainConfig, popularity: np.ndarray) -> Task:
    pop = negative_weights(tc.extra, popularity)
    return NextItemTask(
        cfg.max_len,
        tc.loss,
        tc.num_negatives,
        pop,
        bucket=tc.bucket,
        newest_prob=tc.newest_prob,
        logq=str(tc.extra.get("logq", "negatives")),
        exclude_seen=bool(tc.extra.get("exclude_seen", False)),
    )


def _bert4rec_task(cfg: BERT4RecConfig, tc: TrainConfig, popularity: np.ndarray) -> Task:
    x = tc.extra
    return ClozeTask(
        cfg.max_len,
        mask_token=cfg.num_items + 1,
        mask_prob=float(x.get("mask_prob", 0.2)),
        last_item_ratio=float(x.get("last_item_ratio", 0.1)),
        prefix_ratio=float(x.get("prefix_ratio", 0.0)),
        loss_name=tc.loss,
        num_negatives=tc.num_negatives,
        popularity=negative_weights(x, popularity),
        logq=str(x.get("logq", "negatives")),
        bucket=tc.bucket,
        newest_prob=tc.newest_prob,
        exclude_seen=bool(x.get("exclude_seen", False)),
    )


def _gru4rec_task(cfg: GRU4RecConfig, tc: TrainConfig, popularity: np.ndarray) -> Task:
    """train.parallel=session (session-parallel, the paper) | padded (whole sequences, full BPTT)."""
    x = tc.extra
    neg = {
        "loss_name": tc.loss,
        "n_extra": int(x.get("n_extra_negatives", tc.num_negatives)),
        "alpha": float(x.get("alpha", 0.5)),
        "bpreg": float(x.get("bpreg", 1.0)),
        "final_act": str(x.get("final_act", "linear")),
        "popularity": torch.as_tensor(popularity, dtype=torch.float),
    }
    mode = x.get("parallel", "session")
    if mode == "session":
        return SessionParallelTask(**neg)
    if mode == "padded":
        return PaddedNextItemTask(**neg, max_len=cfg.max_len, bucket=tc.bucket)
    raise ValueError(f"gru4rec: train.parallel must be session or padded, got {mode!r}")


def _unisrec_task(cfg: UniSRecConfig, tc: TrainConfig, popularity: np.ndarray) -> Task:
    return ContrastiveNextItemTask(
        cfg.max_len, temperature=cfg.temperature, candidates=torch.as_tensor(popularity > 0), bucket=tc.bucket
    )


def _unisrec_setup(model: SeqRecModel, data: Any, tc: TrainConfig) -> None:
    from training.unisrec import setup_unisrec  # imports the text stack only when UniSRec is used

    setup_unisrec(model, data, tc)


def _unisrec_export(model: SeqRecModel, out: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    from training.unisrec import export_unisrec_extra

    return export_unisrec_extra(model, out, ckpt)


MODELS: dict[str, ModelSpec] = {
    "sasrec": ModelSpec(
        "sasrec",
        SASRecConfig,
        SASRec,
        _sasrec_task,
        model_defaults={"max_len": 200, "dim": 64, "num_layers": 2, "num_heads": 1, "dropout": 0.2},
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, loss="ce", patience=10),
    ),
    # Sun et al. 2019 (ML-1M): d=64, 2 layers, 2 heads, dropout 0.1, N=200, rho=0.2, batch 256,
    # Adam lr 1e-4 for 400k steps. Ours: lr 1e-3, batch 32, length-bucketed batches. BERT4Rec is
    # step-starved (ML-1M has 6,040 users: 47 steps an epoch at batch 128), and bucketing cuts
    # the padded cells of an epoch 1.8x; on one CPU thread this reaches validation NDCG@10 0.129
    # in 49 min where batch 128 / lr 2e-3 unbucketed needed 94 min (README). lr 2e-3 at batch 64
    # stalls on the early plateau (0.020 after 8 epochs vs 0.039 at lr 1e-3, batch 32).
    "bert4rec": ModelSpec(
        "bert4rec",
        BERT4RecConfig,
        BERT4Rec,
        _bert4rec_task,
        model_defaults={"max_len": 200, "dim": 64, "num_layers": 2, "num_heads": 2, "dropout": 0.1},
        train_defaults=TrainConfig(
            epochs=400,
            batch_size=32,
            lr=1e-3,
            bucket=True,
            weight_decay=0.01,
            loss="ce",
            patience=20,
            grad_clip=5.0,
            extra={"mask_prob": 0.2, "last_item_ratio": 0.1},
        ),
    ),
    # GRU4Rec with the shared ("constrained") embedding, cross-entropy over the mini-batch's
    # targets plus 2048 supp^0.5 negatives, session-parallel mini-batches (Hidasi & Karatzoglou 2018).
    "gru4rec": ModelSpec(
        "gru4rec",
        GRU4RecConfig,
        GRU4Rec,
        _gru4rec_task,
        model_defaults={"max_len": 200, "dim": 128, "num_layers": 1, "embedding": "shared"},
        train_defaults=TrainConfig(
            epochs=100,
            batch_size=128,
            lr=1e-3,
            loss="ce",
            num_negatives=2048,
            patience=5,
            extra={"parallel": "session", "alpha": 0.5, "bpreg": 1.0, "final_act": "linear"},
        ),
    ),
    # Item vectors from text (PLM -> whitening MoE adaptor); mode=inductive|transductive;
    # train.init=PRETRAINED loads a `seqrec pretrain` checkpoint; train.items_file= for generic data.
    "unisrec": ModelSpec(
        "unisrec",
        UniSRecConfig,
        UniSRec,
        _unisrec_task,
        # new_item_head 3: the beta that cold validation chose on Office (both seeds); 0 turns the
        # head off (item rows stay D-wide, the paper's scoring).
        model_defaults={
            "max_len": 50,
            "dim": 64,
            "num_layers": 2,
            "num_heads": 2,
            "dropout": 0.5,
            "new_item_head": 3.0,
        },
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, loss="ce", patience=10),
        setup=_unisrec_setup,
        export_extra=_unisrec_export,
    ),
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, num_items: int, overrides: dict[str, Any] | None = None) -> SeqRecModel:
    spec = get_spec(name)
    params = {**spec.model_defaults, **(overrides or {})}
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"{name}: unknown model option(s) {', '.join(sorted(unknown))}; known: {sorted(known)}")
    return spec.model_cls(spec.config_cls(num_items=num_items, **params))
