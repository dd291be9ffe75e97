"""The model registry: every trainable model, its config, its task and its training defaults.

Adding a model = one entry here; the CLI, trainer, evaluator and exporter use nothing else.
Model defaults live in the model's own dataclass (models/*.py) and nowhere else; per-model
training defaults (e.g. BERT4Rec's batch 32) are the spec's `train_defaults`; task defaults are
the task config dataclass's (training/config.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bert4rec import BERT4Rec, BERT4RecConfig
from models.gru4rec import GRU4Rec, GRU4RecConfig
from models.hrnn import HRNN, HRNNConfig
from models.hstu import HSTU, HSTUConfig
from models.layers import SeqRecModel
from models.lrurec import LRURec, LRURecConfig
from models.sasrec import SASRec, SASRecConfig
from models.tisasrec import TiSASRec, TiSASRecConfig
from models.unisrec import UniSRec, UniSRecConfig
from training.cloze import ClozeTask
from training.config import (
    ClozeConfig,
    ConfigError,
    ContrastiveConfig,
    NegativesConfig,
    NextItemConfig,
    SessionTaskConfig,
    TaskConfig,
    TrainConfig,
    check_fields,
    option_fields,
    resolve_loss,
)
from training.dwell import dwell_spec
from training.gru4rec_tasks import PaddedNextItemTask, SessionParallelTask
from training.hrnn import HRNNTask
from training.tasks import ContrastiveNextItemTask, NextItemTask, Task

# (model, prepared dataset, train config, task config) -> None: fills dataset-dependent state
# before training (e.g. UniSRec's item text embeddings, a pre-trained initialisation).
SetupFn = Callable[[SeqRecModel, Any, TrainConfig, Any], None]
# (model, bundle temp dir, checkpoint) -> extra manifest entries; writes extra bundle files.
ExportExtraFn = Callable[[SeqRecModel, Path, dict[str, Any]], dict[str, Any]]
# (model config, task config) -> the manifest's `history_transform` (app/bundles/history.py) or None.
HistoryTransformFn = Callable[[Any, Any], dict[str, Any] | None]
# model -> (a module (state (layers, B, H), item_seq (B, T)) -> (state', user_vec), (layers, H)): the
# recurrent state the exporter writes as step.onnx, served incrementally (manifest `incremental`).
RecurrentStepFn = Callable[[SeqRecModel], tuple[torch.nn.Module, tuple[int, int]]]
# model -> (the model, with `step` and `empty_cache` as HSTU's, the cache dtype "float16" | "float32"):
# causal attention whose per-layer keys and values the exporter writes as step.onnx, served
# incrementally from a per-user key/value cache (manifest `incremental`, kind kv_cache).
KvCacheFn = Callable[[SeqRecModel], tuple[HSTU, str]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: type
    model_cls: Callable[[Any], SeqRecModel]
    # (model config, train config, task config, popularity) -> the task
    make_task: Callable[[Any, TrainConfig, Any, np.ndarray], Task]
    task_config_cls: type[TaskConfig] = TaskConfig
    train_defaults: TrainConfig = field(default_factory=TrainConfig)
    setup: SetupFn | None = None
    export_extra: ExportExtraFn | None = None
    # Reads event times: the model (uses_times) or the task / history transform. The trainer then
    # requires timestamps and passes `times=` to the task's batches.
    needs_times: bool = False
    history_transform: HistoryTransformFn | None = None
    recurrent_step: RecurrentStepFn | None = None
    kv_cache: KvCacheFn | None = None


def negative_weights(x: NegativesConfig, popularity: np.ndarray) -> torch.Tensor | None:
    """Sampled-softmax negatives drawn ~ supp^alpha (None = uniform), as GRU4Rec's extra negatives.

    task.neg_alpha sets alpha (0 uniform, 1 popularity); task.pop_negatives=true means alpha 1.
    task.neg_uniform=u in [0, 1) draws from the mixture u * uniform + (1 - u) * supp^alpha: the
    logQ correction then uses the mixture's q, which is at least u / N for every item. Why: with
    alpha > 0 alone, BERT4Rec on Beauty collapses (alpha 1 and 0.5 both) as rare items, almost
    never drawn, keep inflating the shared input/output table; the uniform share pushes each of
    them down every few steps while the rest of the draw still brings the hard, popular ones.
    """
    alpha = x.neg_alpha if x.neg_alpha is not None else (1.0 if x.pop_negatives else 0.0)
    if alpha < 0:
        raise ConfigError(f"task.neg_alpha must be >= 0, got {alpha}")
    u = x.neg_uniform
    if not 0.0 <= u < 1.0:
        raise ConfigError(f"task.neg_uniform must be in [0, 1), got {u}")
    if alpha == 0:
        return None  # uniform already; a mixture with uniform is uniform
    w = torch.as_tensor(popularity, dtype=torch.float64) ** alpha  # (N+1,), w[0] = 0 (padding)
    if u == 0:
        return w.float()
    q = (1 - u) * w / w.sum()
    q[1:] += u / (len(q) - 1)  # the padding row stays impossible
    return q.float()


def _sasrec_task(
    cfg: SASRecConfig | TiSASRecConfig, tc: TrainConfig, x: NextItemConfig, popularity: np.ndarray
) -> Task:
    tc, x = resolve_loss(tc, x, cfg.num_items)  # type: ignore[assignment]  # loss "auto": by catalogue size
    return NextItemTask(
        cfg.max_len,
        tc.loss,
        tc.num_negatives,
        negative_weights(x, popularity),
        bucket=tc.bucket,
        newest_prob=tc.newest_prob,
        logq=x.logq,
        exclude_seen=x.exclude_seen,
        in_batch=torch.as_tensor(popularity) if x.in_batch else None,
    )


def _bert4rec_task(cfg: BERT4RecConfig, tc: TrainConfig, x: ClozeConfig, popularity: np.ndarray) -> Task:
    tc, x = resolve_loss(tc, x, cfg.num_items)  # type: ignore[assignment]
    return ClozeTask(
        cfg.max_len,
        mask_token=cfg.num_items + 1,
        mask_prob=x.mask_prob,
        last_item_ratio=x.last_item_ratio,
        prefix_ratio=x.prefix_ratio,
        loss_name=tc.loss,
        num_negatives=tc.num_negatives,
        popularity=negative_weights(x, popularity),
        logq=x.logq,
        bucket=tc.bucket,
        newest_prob=tc.newest_prob,
        exclude_seen=x.exclude_seen,
    )


def _gru4rec_dwell(cfg: GRU4RecConfig, x: SessionTaskConfig) -> dict[str, Any] | None:
    """The dwell-repetition history transform (training/dwell.py) when task.dwell_unit_s > 0."""
    try:
        return dwell_spec(x.dwell_unit_s, x.dwell_cap_s, x.session_gap_s)
    except ValueError as exc:
        raise ConfigError(f"gru4rec: {exc}") from None


def _gru4rec_task(cfg: GRU4RecConfig, tc: TrainConfig, x: SessionTaskConfig, popularity: np.ndarray) -> Task:
    """task.parallel=session (session-parallel, the paper) | padded (whole sequences, full BPTT)."""
    neg = {
        "loss_name": "ce" if tc.loss == "auto" else tc.loss,  # its ce spans the batch + extra negatives only
        "n_extra": x.n_extra_negatives if x.n_extra_negatives is not None else tc.num_negatives,
        "alpha": x.alpha,
        "bpreg": x.bpreg,
        "final_act": x.final_act,
        "popularity": torch.as_tensor(popularity, dtype=torch.float),
    }
    if x.parallel == "session":
        if x.dwell_unit_s:
            raise ConfigError("gru4rec: task.dwell_unit_s needs task.parallel=padded (whole user sequences)")
        if x.exclude_seen:
            raise ConfigError("gru4rec: task.exclude_seen needs task.parallel=padded (whole user sequences)")
        return SessionParallelTask(**neg)
    if x.parallel == "padded":
        return PaddedNextItemTask(
            **neg,
            max_len=cfg.max_len,
            bucket=tc.bucket,
            newest_prob=tc.newest_prob,
            exclude_seen=x.exclude_seen,
            dwell=_gru4rec_dwell(cfg, x),
        )
    raise ConfigError(f"gru4rec: task.parallel must be session or padded, got {x.parallel!r}")


def _hrnn_task(cfg: HRNNConfig, tc: TrainConfig, x: TaskConfig, popularity: np.ndarray) -> Task:
    if tc.loss not in ("ce", "auto"):
        raise ConfigError(f"hrnn trains with train.loss=ce (full softmax) only, got {tc.loss!r}")
    return HRNNTask(max_len=cfg.max_len, bucket=tc.bucket, newest_prob=tc.newest_prob)


def _unisrec_task(cfg: UniSRecConfig, tc: TrainConfig, x: ContrastiveConfig, popularity: np.ndarray) -> Task:
    return ContrastiveNextItemTask(
        cfg.max_len, temperature=cfg.temperature, candidates=torch.as_tensor(popularity > 0), bucket=tc.bucket
    )


def _unisrec_setup(model: SeqRecModel, data: Any, tc: TrainConfig, x: ContrastiveConfig) -> None:
    from training.unisrec import setup_unisrec  # imports the text stack only when UniSRec is used

    setup_unisrec(model, data, tc, x)


def _unisrec_export(model: SeqRecModel, out: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    from training.unisrec import export_unisrec_extra

    return export_unisrec_extra(model, out, ckpt)


# HSTU's per-user key/value cache is stored as float16 (half the bytes per user, a user-vector error
# of ~1e-5 of its norm, docs/results/hstu.md); "float32" here exports the exact cache instead.
HSTU_CACHE_DTYPE = "float16"


def _hstu_kv_cache(model: SeqRecModel) -> tuple[HSTU, str]:
    assert isinstance(model, HSTU)
    return model, HSTU_CACHE_DTYPE


def _gru4rec_step(model: SeqRecModel) -> tuple[torch.nn.Module, tuple[int, int]]:
    from models.gru4rec import GRUStep

    assert isinstance(model, GRU4Rec)
    return GRUStep(model), model.state_shape


def _lrurec_step(model: SeqRecModel) -> tuple[torch.nn.Module, tuple[int, int]]:
    from models.lrurec import LRURecStep

    assert isinstance(model, LRURec)
    return LRURecStep(model), model.state_shape


MODELS: dict[str, ModelSpec] = {
    "sasrec": ModelSpec(
        "sasrec",
        SASRecConfig,
        SASRec,
        _sasrec_task,
        NextItemConfig,
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, patience=10),
    ),
    # SASRec with clipped, per-user-scaled time intervals in the attention's keys and values
    # (Li et al. 2020); the same next-item task and loss as SASRec, fed the events' times too.
    "tisasrec": ModelSpec(
        "tisasrec",
        TiSASRecConfig,
        TiSASRec,
        _sasrec_task,
        NextItemConfig,
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, patience=10),
        needs_times=True,
    ),
    # Sun et al. 2019 (ML-1M): d=64, 2 layers, 2 heads, dropout 0.1, N=200, rho=0.2, batch 256,
    # Adam lr 1e-4 for 400k steps. Ours: lr 1e-3, batch 32, length-bucketed batches. BERT4Rec is
    # step-starved (ML-1M has 6,040 users: 47 steps an epoch at batch 128), and bucketing cuts
    # the padded cells of an epoch 1.8x; on one CPU thread this reaches validation NDCG@10 0.129
    # in 49 min where batch 128 / lr 2e-3 unbucketed needed 94 min (docs/results). lr 2e-3 at
    # batch 64 stalls on the early plateau (0.020 after 8 epochs vs 0.039 at lr 1e-3, batch 32).
    "bert4rec": ModelSpec(
        "bert4rec",
        BERT4RecConfig,
        BERT4Rec,
        _bert4rec_task,
        ClozeConfig,
        train_defaults=TrainConfig(
            epochs=400,
            batch_size=32,
            lr=1e-3,
            bucket=True,
            weight_decay=0.01,
            loss="ce",
            patience=20,
            grad_clip=5.0,
        ),
    ),
    # GRU4Rec with the shared ("constrained") embedding, cross-entropy over the mini-batch's
    # targets plus 2048 supp^0.5 negatives, session-parallel mini-batches (Hidasi & Karatzoglou 2018).
    "gru4rec": ModelSpec(
        "gru4rec",
        GRU4RecConfig,
        GRU4Rec,
        _gru4rec_task,
        SessionTaskConfig,
        train_defaults=TrainConfig(epochs=100, batch_size=128, lr=1e-3, loss="ce", num_negatives=2048, patience=5),
        history_transform=_gru4rec_dwell,  # task.dwell_unit_s > 0: dwell repetition, served alike
        recurrent_step=_gru4rec_step,  # its state per user, advanced by each new event (step.onnx)
    ),
    # Session GRU + user GRU across sessions (Quadrana et al. 2017); reads event times, trained on
    # padded user sequences with a full softmax (training/hrnn.py).
    "hrnn": ModelSpec(
        "hrnn",
        HRNNConfig,
        HRNN,
        _hrnn_task,
        TaskConfig,
        train_defaults=TrainConfig(epochs=100, batch_size=128, lr=1e-3, loss="ce", patience=5),
        needs_times=True,
    ),
    # Item vectors from text (PLM -> whitening MoE adaptor); model.mode=inductive|transductive;
    # task.init=PRETRAINED loads a `seqrec pretrain` checkpoint; task.items_file= for generic data.
    "unisrec": ModelSpec(
        "unisrec",
        UniSRecConfig,
        UniSRec,
        _unisrec_task,
        ContrastiveConfig,
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, loss="ce", patience=10),
        setup=_unisrec_setup,
        export_extra=_unisrec_export,
    ),
    # Complex diagonal linear recurrence + FFN blocks (Yue et al. 2024), trained with a parallel
    # scan on SASRec's next-item task (full softmax); the authors' defaults: d=64, 2 layers,
    # dropout 0.2, AdamW lr 1e-3, weight decay 0.01, clip 5, batch 128. Served incrementally
    # from its recurrent state (step.onnx), like GRU4Rec.
    "lrurec": ModelSpec(
        "lrurec",
        LRURecConfig,
        LRURec,
        _sasrec_task,
        NextItemConfig,
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, weight_decay=0.01, grad_clip=5.0, patience=10),
        recurrent_step=_lrurec_step,
    ),
    # Pointwise SiLU attention with relative position and time-gap biases (Zhai et al. 2024); the
    # reference's ML-1M setting: d=50, 2 layers, 1 head, dropout 0.2, lr 1e-3, batch 128, cosine
    # scores / 0.05, sampled softmax over 128 uniform negatives (here shared by the batch).
    # Reads event times when model.time_buckets > 0.
    "hstu": ModelSpec(
        "hstu",
        HSTUConfig,
        HSTU,
        _sasrec_task,
        NextItemConfig,
        train_defaults=TrainConfig(epochs=200, batch_size=128, lr=1e-3, loss="sampled", num_negatives=128, patience=10),
        kv_cache=_hstu_kv_cache,  # step.onnx: each new event extends the user's cached keys and values
    ),
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def model_config(name: str, num_items: int, overrides: dict[str, Any] | None = None) -> Any:
    """The model's config dataclass: its own defaults, then `overrides` (checked: unknown keys
    and wrong types are a ConfigError listing the valid options)."""
    spec = get_spec(name)
    return spec.config_cls(num_items=num_items, **check_fields(spec.config_cls, dict(overrides or {}), "model"))


def build_model(name: str, num_items: int, overrides: dict[str, Any] | None = None) -> SeqRecModel:
    return get_spec(name).model_cls(model_config(name, num_items, overrides))


def resolve(
    name: str,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    task_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], TrainConfig, TaskConfig]:
    """A run's (model options, TrainConfig, task config) from the three override tables, each
    checked against its dataclass (ConfigError on an unknown key or a wrong type).

    `train_overrides["extra"]`, the untyped task dict of older callers and checkpoints, is read
    as task options.
    """
    spec = get_spec(name)
    train_over = dict(train_overrides or {})
    legacy = train_over.pop("extra", None) or {}
    tables = {"model": dict(model_overrides or {}), "train": train_over, "task": {**legacy, **(task_overrides or {})}}
    classes = {"model": spec.config_cls, "train": TrainConfig, "task": spec.task_config_cls}
    owners = {s: {f.name for f in option_fields(c)} for s, c in classes.items()}
    for section, values in tables.items():
        for key in values:
            if key not in owners[section]:
                home = [s for s in owners if key in owners[s]]
                if home:  # a key in the wrong table: say where it belongs
                    raise ConfigError(f"{section}.{key} is a {home[0]} option of {name}: use {home[0]}.{key}")
    model_over = check_fields(spec.config_cls, tables["model"], "model")
    tc = spec.train_defaults.updated(**train_over)
    task = spec.task_config_cls(**check_fields(spec.task_config_cls, tables["task"], "task"))
    return model_over, tc, task


def transform_spec(name: str, model_cfg: Any, task_cfg: Any) -> dict[str, Any] | None:
    """The manifest's `history_transform` of a run (app/bundles/history.py), or None."""
    fn = get_spec(name).history_transform
    return fn(model_cfg, task_cfg) if fn is not None else None


def reads_times(name: str, model: SeqRecModel, task_cfg: Any) -> bool:
    """Whether training, evaluation and serving of this run need the events' timestamps."""
    spec = get_spec(name)
    return bool(model.uses_times or spec.needs_times or transform_spec(name, model.cfg, task_cfg) is not None)  # type: ignore[attr-defined]


def time_eval_kwargs(name: str, model: SeqRecModel, task_cfg: Any, times: Any, data_name: str = "") -> dict[str, Any]:
    """full_rank_eval's keywords for a run that reads times (empty for one that does not).

    Raises ConfigError when the run needs timestamps and the split has none.
    """
    if not reads_times(name, model, task_cfg):
        return {}
    if times is None:
        raise ConfigError(
            f"{name} needs event timestamps; dataset {data_name or '?'} has none (map a time column with --time-col)"
        )
    from functools import partial

    from app.bundles.history import apply_transform

    spec = transform_spec(name, model.cfg, task_cfg)  # type: ignore[attr-defined]
    return {
        "times": times,
        "transform": partial(apply_transform, spec) if spec is not None else None,
        "pass_times": bool(model.uses_times),
    }
