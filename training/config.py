"""Every training option, declared once, typed, with its help text; recipes; `--set` overrides.

Three tables configure a run, in a recipe file (`recipes/*.toml`) and on the command line alike:

  [model]  the model's own dataclass (models/*.py), plus `name` (the model) - architecture
  [train]  TrainConfig below - the loop: optimiser, schedule, budget, batching, device
  [task]   the model's task config below (NextItemConfig, ClozeConfig, ...) - how sequences
           become batches and losses: masking, negatives, sampling

`parse_overrides(["train.lr=0.002", "task.mask_prob=0.3"])` turns `--set` pairs into those tables;
`resolve_tables` checks every key against the dataclass, so a misspelt or unknown key is an error
that lists the valid ones, and a value of the wrong type is an error naming the expected type.
The CLI (`seqrec train`, `seqrec options`) and `benchmarks/training/train_quality.py` both use these.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

SECTIONS = ("model", "train", "task")
RECIPE_KEYS = ("description", "dataset", "file", "result")  # top-level keys a recipe may hold
# The recipes shipped with the code: `--recipe sasrec-office` finds recipes/sasrec-office.toml from
# any working directory.
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class ConfigError(ValueError):
    """A recipe or override that does not fit the dataclasses (unknown key, wrong type)."""


def opt(default: Any, help: str) -> Any:
    """A dataclass field with its help text (shown by --help, `seqrec options`, docs/recipes.md)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """The training loop's options ([train] in a recipe, `--set train.KEY=VALUE`)."""

    epochs: int = opt(200, "Maximum epochs.")
    batch_size: int = opt(128, "Sequences per batch.")
    lr: float = opt(1e-3, "AdamW peak learning rate.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    grad_clip: float = opt(1.0, "Clip the gradient norm to this (0 = off).")
    loss: str = opt(
        "auto",
        "auto: ce up to `ce_max_items` items, beyond them sampled (at least 4,096 popularity negatives with logQ); "
        "ce (exact full softmax, chunked: memory bounded, time grows with the catalogue), sampled (sampled "
        "softmax), bce (sampled binary); GRU4Rec also bpr-max, top1-max.",
    )
    ce_max_items: int = opt(
        50_000, "loss auto: the largest catalogue trained with the full softmax; a larger one gets the sampled one."
    )
    num_negatives: int = opt(1, "Negatives per positive (bce) or per batch (sampled).")
    patience: int = opt(10, "Evaluations without a validation NDCG@10 gain before stopping.")
    eval_every: int = opt(1, "Evaluate on validation every N epochs.")
    eval_batch_size: int = opt(1024, "Users per evaluation batch.")
    seed: int = opt(42, "Random seed (data order, init, sampling).")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N.")
    amp: bool = opt(True, "bf16 autocast on CUDA.")
    amp_cpu: bool = opt(
        False,
        "bf16 autocast on CPU too: ~1.7x faster epochs where the CPU has AVX512-BF16/AMX, slower on older CPUs.",
    )
    lr_schedule: str = opt(
        "constant",
        "constant; cosine: linear warm-up, then cosine decay to 0 at `epochs`, or where `max_minutes` will stop "
        "training if that comes first (re-estimated from the pace every epoch); wsd: warm-up, the peak lr held, "
        "then a linear decay to 0 over the last `decay_fraction` of the run (same end).",
    )
    warmup_epochs: float = opt(0.0, "Epochs of linear learning-rate warm-up.")
    decay_fraction: float = opt(0.2, "wsd only: the final fraction of the run over which the lr decays to 0.")
    bucket: bool = opt(False, "Length-bucketed batches: rows of similar length together, less padding.")
    newest_prob: float = opt(
        1.0,
        "Long sequences: probability of training on the newest max_len window, else a random earlier one.",
    )
    ema: float = opt(
        0.0,
        "Decay of an exponential moving average of the weights (e.g. 0.999; 0 = off). Validation, early "
        "stopping, the checkpoint and export use the average; horizon ~ 1/(1-decay) steps.",
    )
    max_minutes: float | None = opt(
        None, "Wall-clock budget: stop at the step that crosses it (mid-epoch too; that partial epoch is evaluated)."
    )
    max_users: int | None = opt(None, "Train and evaluate on the first N users only (quick experiments).")
    num_threads: int | None = opt(
        None,
        "torch intra-op threads (default: torch's). 1-2 is faster for small models on a busy shared CPU.",
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **overrides: Any) -> TrainConfig:
        """A copy with `overrides` applied (None values ignored); unknown keys are an error."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **check_fields(TrainConfig, given, "train"))


# --------------------------------------------------------------------------- task configs


@dataclass
class TaskConfig:
    """Base of the per-task settings ([task] in a recipe, `--set task.KEY=VALUE`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NegativesConfig(TaskConfig):
    """Sampled negatives (`train.loss` sampled or bce) shared by the next-item and Cloze tasks."""

    neg_alpha: float | None = opt(
        None, "Negatives drawn ~ support^alpha: 0 uniform, 1 popularity (default: 1 if pop_negatives, else 0)."
    )
    pop_negatives: bool = opt(False, "Shorthand for neg_alpha=1 (popularity negatives).")
    neg_uniform: float = opt(
        0.0, "Share u in [0, 1) of the draw that is uniform: u * uniform + (1 - u) * support^alpha."
    )
    logq: str = opt("negatives", "logQ correction of non-uniform negatives: negatives (only) or sampled (also +).")
    exclude_seen: bool = opt(False, "The user's own items are not negatives (CE and sampled softmax).")


@dataclass
class NextItemConfig(NegativesConfig):
    """SASRec: the next item at every position (causal)."""

    in_batch: bool = opt(
        False, "Sampled softmax: the batch's own targets (each once) join the drawn negatives, logQ-corrected."
    )
    type_input: bool = opt(
        False, "Typed data, sasrec: the model reads each event's type (a learned type embedding; sets model.num_types)."
    )
    type_weights: dict[str, float] | None = opt(  # noqa: RUF009  (default None: nothing shared)
        None,
        "Typed data: a training target's loss weight by its event type, e.g. {view = 0.3}: target types weigh 1 "
        "and input-only types 0 unless named (above 0 they are learned too; evaluation stays on the target types); "
        "the loss is sum(w * loss) / sum(w).",
    )


@dataclass
class ClozeConfig(NegativesConfig):
    """BERT4Rec: masked items (Cloze), plus last-item samples that match inference."""

    mask_prob: float = opt(0.2, "rho: probability that an item is masked.")
    last_item_ratio: float = opt(0.1, "Extra samples per sequence with only the last item masked.")
    prefix_ratio: float = opt(0.0, "Extra samples per sequence: a random proper prefix, its last item masked.")


@dataclass
class SessionTaskConfig(TaskConfig):
    """GRU4Rec: session-parallel (the paper) or padded mini-batches, ranking losses, extra negatives."""

    parallel: str = opt("session", "session (session-parallel mini-batches) or padded (whole sequences, full BPTT).")
    n_extra_negatives: int | None = opt(
        None, "Extra negatives ~ support^alpha shared by the batch (-1 = every item; default: train.num_negatives)."
    )
    alpha: float = opt(0.5, "Exponent of the extra negatives' sampling distribution.")
    bpreg: float = opt(1.0, "BPR-max score regularisation.")
    final_act: str = opt("linear", "Output activation before the loss: linear, elu-1, tanh, ...")
    exclude_seen: bool = opt(
        False,
        "padded, loss ce, n_extra_negatives=-1 only: the row's own items are not negatives in the full softmax.",
    )
    dwell_unit_s: int = opt(
        0,
        "Dwell time (padded only): an event is read floor(min(dwell, dwell_cap_s) / dwell_unit_s) + 1 times, "
        "dwell = the gap to the next event of the same session; in training, evaluation and serving alike, "
        "the newest history event read once (0 = off; needs timestamps).",
    )
    dwell_cap_s: int = opt(300, "Dwell time: longer dwells count as this many seconds.")
    session_gap_s: int = opt(1800, "Dwell time: a gap longer than this ends the session (no dwell for its last event).")


@dataclass
class ContrastiveConfig(TaskConfig):
    """UniSRec fine-tuning: contrastive next item over text-based item vectors."""

    init: str | None = opt(None, "A `seqrec pretrain` checkpoint to start from (adaptor + transformer).")
    items_file: str | None = opt(None, "Item text file for generic data (CSV/Parquet with item_id and text columns).")
    text_from: str | None = opt(None, "Take item text from this named dataset instead of the trained one.")


# --------------------------------------------------------------------------- the automatic loss

# What `train.loss = "auto"` trains a catalogue larger than `train.ce_max_items` with: a softmax
# over the positive and 4,096 negatives shared by the batch, drawn by popularity, with the logQ
# correction. On Beauty (54,542 items) that beat the published full-softmax result, while on
# ML-1M (3,416 items) the full softmax stays ahead (docs/results/sasrec.md); its step costs the
# same at 20k items as at 5M (docs/scale.md), where the full softmax's grows with the catalogue.
AUTO_NEGATIVES = 4096


def resolve_loss(tc: TrainConfig, task: TaskConfig, num_items: int) -> tuple[TrainConfig, TaskConfig]:
    """(train, task) configs with `loss = "auto"` replaced by what it means for `num_items` items:
    ce up to tc.ce_max_items, else sampled over max(num_negatives, AUTO_NEGATIVES) negatives,
    drawn by popularity unless the task sets its own draw (neg_alpha). Any other loss is kept."""
    if tc.loss != "auto":
        return tc, task
    if num_items <= tc.ce_max_items:
        return replace(tc, loss="ce"), task
    tc = replace(tc, loss="sampled", num_negatives=max(tc.num_negatives, AUTO_NEGATIVES))
    if isinstance(task, NegativesConfig) and task.neg_alpha is None:
        task = replace(task, pop_negatives=True)
    return tc, task


def describe_loss(tc: TrainConfig, task: TaskConfig, num_items: int) -> str:
    """One line on what `loss = "auto"` chose and why ("" for an explicit loss)."""
    if tc.loss != "auto":
        return ""
    chosen, _ = resolve_loss(tc, task, num_items)
    if chosen.loss == "ce":
        return f"loss auto: ce, the full softmax ({num_items:,} items <= train.ce_max_items={tc.ce_max_items:,})"
    return (
        f"loss auto: sampled softmax over {chosen.num_negatives:,} shared negatives "
        f"({num_items:,} items > train.ce_max_items={tc.ce_max_items:,})"
    )


# --------------------------------------------------------------------------- typed fields


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The settable fields of a config dataclass (a model's num_items comes from the data)."""
    return [f for f in fields(cls) if f.name != "num_items" and not f.name.startswith("_")]


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (int -> float widening, "none"/"null" for optional fields), else ConfigError."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def check_fields(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    """`values` checked against `cls`'s fields: unknown keys and wrong types are a ConfigError."""
    known = {f.name: f for f in option_fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        hints = "".join(f" ({section}.{k}: did you mean {section}.{m[0]}?)" for k, m in close.items() if m)
        raise ConfigError(
            f"unknown {section} option(s) {', '.join(f'{section}.{k}' for k in unknown)} for {cls.__name__}{hints}; "
            f"valid: {', '.join(sorted(known))}"
        )
    hints = _hints(cls)
    return {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}


# --------------------------------------------------------------------------- overrides and recipes


def parse_value(raw: str) -> Any:
    """A `--set` value as TOML reads it (numbers, true/false, "strings", [lists]), else the raw string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`["train.lr=0.002", "model.num_layers=4"]` -> {"model": {...}, "train": {...}, "task": {...}}.

    The one grammar of `--set`, shared by `seqrec train` and the benchmarks: TABLE.KEY=VALUE,
    TABLE one of model / train / task; the keys are checked later, against the model's dataclasses.
    """
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in SECTIONS or not name:
            raise ConfigError(
                f"--set expects TABLE.KEY=VALUE with TABLE one of {', '.join(SECTIONS)} "
                f"(e.g. train.lr=0.002, model.num_layers=4, task.mask_prob=0.3), got {pair!r}"
            )
        out[section][name] = parse_value(raw.strip())
    return out


def merge_tables(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later layers win, key by key."""
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for layer in layers:
        for s in SECTIONS:
            out[s].update(layer.get(s, {}))
    return out


@dataclass
class Recipe:
    """A recipe file: top-level dataset (or file), description, result; [model] (with `name`), [train], [task]."""

    path: Path | None
    dataset: str | None
    file: str | None
    description: str
    result: str | None
    tables: dict[str, dict[str, Any]]

    @property
    def model(self) -> str | None:
        return self.tables["model"].get("name")

    @classmethod
    def load(cls, path: Path | str) -> Recipe:
        path = find_recipe(path)
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        unknown = sorted(k for k in doc if k not in (*RECIPE_KEYS, *SECTIONS))
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {', '.join(unknown)}; a recipe holds {', '.join(RECIPE_KEYS)} "
                f"and the tables [{'], ['.join(SECTIONS)}]"
            )
        tables: dict[str, dict[str, Any]] = {}
        for s in SECTIONS:
            t = doc.get(s, {})
            if not isinstance(t, dict):
                raise ConfigError(f"{path}: {s} must be a table ([{s}])")
            tables[s] = dict(t)
        return cls(path, doc.get("dataset"), doc.get("file"), doc.get("description", ""), doc.get("result"), tables)


def recipe_names() -> list[str]:
    """The shipped recipes, by name (file stem)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def find_recipe(ref: Path | str) -> Path:
    """A recipe file: `ref` as a path when it is one, else a shipped recipe of that name (with or
    without `.toml`, with or without the `recipes/` folder), whatever the working directory."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if shipped.is_file():
        return shipped
    names = recipe_names()
    close = difflib.get_close_matches(path.stem, names, n=1)
    raise ConfigError(
        f"{ref}: recipe not found: neither a file nor one of the recipes in {RECIPES_DIR}"
        + (f" (did you mean {close[0]}?)" if close else "")
        + f"; known: {', '.join(names)}"
    )


def split_model_table(model_table: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """[model] -> (name, the model dataclass's options)."""
    rest = dict(model_table)
    name = rest.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"model.name: expected a string, got {name!r}")
    return name, rest


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """(name, type, default, help) of every option of a config dataclass, for `seqrec options` and docs."""
    hints = _hints(cls)
    out = []
    for f in option_fields(cls):
        default = field_default(f)
        out.append(
            {
                "name": f.name,
                "type": type_name(hints[f.name]),
                "default": None if default is MISSING else default,
                "help": f.metadata.get("help", ""),
            }
        )
    return out
