"""The bundle manifest: one typed model, written by training/export.py and validated by the service.

This module imports only pydantic and the standard library, so the training side can build a
Manifest without pulling in the service's dependencies (onnxruntime, FastAPI, Redis).

Versioning: `format_version` changes when a reader of the old format could not serve a new bundle
correctly (a field changes meaning, a required field appears). Adding an optional field with a
default does not change it: readers ignore fields they do not know, so a bundle exported by a newer
seqrec of the same format still loads in an older server. A bundle of another format is refused
with a message that says what to do (`check_format`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# 3: format 2 plus event times: the encoder takes `onnx.time_input` and/or the history goes through
#    `history_transform`; a format-2 reader would ignore both and serve wrong vectors, so such a
#    bundle is written as 3 (every other bundle stays 2, readable by older servers).
# 2: the manifest is this schema (typed sections; the ONNX input kind, dtype and names stated, not
#    defaulted by the reader). 1: the untyped JSON of earlier exports.
FORMAT_VERSION = 2
TIMED_FORMAT_VERSION = 3
READABLE_FORMATS = frozenset({FORMAT_VERSION, TIMED_FORMAT_VERSION})
MANIFEST_FILE = "manifest.json"
REEXPORT_HINT = "re-export the checkpoint with `seqrec export CHECKPOINT --out DIR`"


class BundleError(ValueError):
    """The bundle is missing, malformed, of another format or fails its checks; it must not be served."""


class UnknownModel(LookupError):
    """A `?model=` value (or a variant's bundle) that no served bundle answers to."""


class _Section(BaseModel):
    # extra="ignore": a field added later (optional, with a default) must not make an older reader
    # refuse the bundle; see the module docstring for when format_version changes instead.
    model_config = ConfigDict(extra="ignore", frozen=True)


class OnnxSpec(_Section):
    """model.onnx's signature: item_seq (B, L) int64, left-padded with padding_index -> user_vec (B, D).

    `time_input`, when set, names a second input: the events' unix seconds (B, L) int64, left-padded
    with 0 where item_seq pads (models that read event times, e.g. time-interval attention).
    """

    input: str = "item_seq"
    output: str = "user_vec"
    opset: int
    input_kind: Literal["item_ids"] = "item_ids"
    input_dtype: Literal["int64"] = "int64"
    padding_index: int = 0
    dynamic_axes: list[str] = Field(default_factory=lambda: ["batch", "length"])
    time_input: str | None = None
    time_dtype: Literal["int64"] = "int64"
    time_unit: Literal["s"] = "s"


class EventTypesSpec(_Section):
    """The encoder reads each event's type: `input` names one more input of model.onnx, (B, L) int64
    aligned with item_seq: the type's position in `names` plus 1, 0 where items pad. An event whose
    type the bundle does not name reads as `names[0]` (the type untyped training events had).

    Optional: a bundle without it is served as before. (An older server, which does not know the
    field, refuses a bundle that has it at load: its probe call lacks the graph's input.)"""

    input: str = Field(min_length=1)
    names: list[str] = Field(min_length=1, max_length=64)
    dtype: Literal["int64"] = "int64"


class TextEncoderSpec(_Section):
    """tokenizer.json + text_encoder.onnx: (input_ids, attention_mask) (B, T) int64 -> (B, dim) text embedding."""

    file: str
    inputs: list[str] = Field(min_length=2, max_length=2)
    input_dtype: Literal["int64"] = "int64"
    output: str
    dim: int = Field(gt=0)
    pooling: str = "mean"
    normalized: bool = True
    source: str = ""


class AdaptorSpec(_Section):
    """adaptor.onnx: text embedding (B, d_t) -> item vector (B, dim)."""

    file: str
    input: str
    output: str
    dim: int = Field(gt=0)


class SeqEncoderSpec(_Section):
    """seq_encoder.onnx: item vectors (B, L, D) float32 + mask (B, L) int64 -> user vector (B, D)."""

    file: str
    inputs: list[str] = Field(min_length=2, max_length=2)
    input_dtypes: list[str] = Field(default_factory=lambda: ["float32", "int64"])
    output: str
    note: str = ""


class ComposeSpec(_Section):
    """How a new item's text is built from its fields: the non-empty ones in order, joined by separator."""

    fields: list[str] = Field(default_factory=lambda: ["title"])
    separator: str = " "
    lists: str = "joined by spaces"
    note: str = ""


class TextSpec(_Section):
    """Present for models that encode items from text (UniSRec): the three extra graphs and the text recipe."""

    tokenizer: str
    max_tokens: int = Field(128, gt=0)
    text_encoder: TextEncoderSpec
    adaptor: AdaptorSpec
    seq_encoder: SeqEncoderSpec
    compose: ComposeSpec = Field(default_factory=ComposeSpec)
    mode: str = ""
    item_vectors_normalized: bool = True
    score: str = ""
    dim_model: int = Field(gt=0)
    new_item_head: float = 0.0
    parity_max_abs_diff: dict[str, float] = Field(default_factory=dict)
    new_item_end_to_end_max_abs_diff: float = 0.0


class IncrementalSpec(_Section):
    """An incremental path the bundle offers besides model.onnx (app/serving/usercache.py serves it).

    kind "rnn_state": `file` maps (state (layers, B, H) float32, item_seq (B, T) int64, no padding)
    to (state after the T items, user_vec (B, D)); from a zero state over a whole history it equals
    model.onnx on that history, so a per-user state is advanced by each new event in O(1).
    """

    kind: Literal["rnn_state"]
    file: str
    inputs: list[str] = Field(min_length=2, max_length=2)
    outputs: list[str] = Field(min_length=2, max_length=2)
    state_shape: list[int] = Field(min_length=2, max_length=2, description="(layers, H) of one user's state.")
    parity_max_abs_diff: float = 0.0


class KvCacheSpec(_Section):
    """kind "kv_cache": a causal attention model's per-user cache of every layer's keys and values.

    `file` maps (cache_k (layers, B, n, Wk), cache_v (layers, B, n, Wv) of `cache_dtype`[, cache_times
    (B, n) int64], item_seq (B, m) int64, no padding[, time_seq (B, m) int64]) to (cache_k and cache_v
    of the n + m events, user_vec (B, D) float32), `inputs` and `outputs` named in that order (the
    times only when `times`). From an empty cache (n = 0) over a whole history it equals model.onnx
    on that history. Exact while n + m <= max_len: past it the window slides, every position moves,
    and the service encodes with model.onnx instead.
    """

    kind: Literal["kv_cache"]
    file: str
    inputs: list[str] = Field(min_length=3, max_length=5)
    outputs: list[str] = Field(min_length=3, max_length=3)
    cache_shape: list[int] = Field(
        min_length=3, max_length=3, description="(layers, Wk, Wv): per layer, the width of one event's key and value."
    )
    cache_dtype: Literal["float32", "float16"] = "float32"
    times: bool = Field(False, description="Whether the step reads the cached and the new events' unix seconds.")
    max_len: int = Field(gt=0, description="The window: n + m past it is encoded by model.onnx, not from the cache.")
    parity_max_abs_diff: float = 0.0

    @model_validator(mode="after")
    def _inputs_match_times(self) -> KvCacheSpec:
        want = 5 if self.times else 3
        if len(self.inputs) != want:
            raise ValueError(f"a kv_cache step with times={self.times} takes {want} inputs, got {self.inputs}")
        if min(self.cache_shape) <= 0:
            raise ValueError(f"cache_shape must be positive, got {self.cache_shape}")
        return self


# Which incremental path a bundle offers, told apart by `kind`.
Incremental = Annotated[IncrementalSpec | KvCacheSpec, Field(discriminator="kind")]


class Manifest(_Section):
    """manifest.json. `files` holds the sha256 of every other file in the bundle."""

    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    model: str = Field(min_length=1, description="Model kind (sasrec, gru4rec, bert4rec, unisrec).")
    version: str = Field(description="Export time stamp; tells two exports of one name apart.")
    created_at: str = ""
    dataset: str = ""
    data_fingerprint: str = ""
    model_config_: dict[str, Any] = Field(default_factory=dict, alias="model_config")
    train_config: dict[str, Any] = Field(default_factory=dict)
    max_len: int = Field(gt=0)
    dim: int = Field(gt=0)
    num_items: int = Field(gt=0)
    metrics: dict[str, Any] = Field(default_factory=dict)
    onnx: OnnxSpec
    parity_max_abs_diff: dict[str, float] = Field(default_factory=dict)
    files: dict[str, str]
    text: TextSpec | None = None
    # Diversity and similar items (their readers, app/serving/diversity.py and app/bundles/spaces.py, check them).
    clusters: dict[str, Any] | None = None
    item_spaces: dict[str, Any] | None = None
    # What the encoder reads, derived from the history's items and times (app/bundles/history.py, e.g.
    # dwell-time repetition): applied by the trainer's evaluation and by the service alike.
    history_transform: dict[str, Any] | None = None
    # Explanations: ablation.onnx, the leave-one-out user vectors in one graph (app/serving/explain.py reads it).
    ablation: dict[str, Any] | None = None
    # Incremental user-state paths (absent: only the full encoder).
    incremental: Incremental | None = None
    # Event types as a model input (absent: the encoder reads items [and times] only).
    event_types: EventTypesSpec | None = None

    # `model_config` is pydantic's own attribute name, so the field is stored as model_config_ and
    # read and written under its JSON name by alias.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, protected_namespaces=())

    @model_validator(mode="after")
    def _times_need_format_3(self) -> Manifest:
        timed = self.onnx.time_input is not None or self.history_transform is not None
        if timed != (self.format_version == TIMED_FORMAT_VERSION):
            raise ValueError(
                f"format_version must be {TIMED_FORMAT_VERSION} exactly when the bundle reads event times "
                f"(onnx.time_input or history_transform), got {self.format_version}"
            )
        return self

    @model_validator(mode="after")
    def _kv_cache_fits_the_encoder(self) -> Manifest:
        inc = self.incremental
        if isinstance(inc, KvCacheSpec):
            if inc.times != (self.onnx.time_input is not None):
                raise ValueError("incremental.times must be true exactly when model.onnx reads times (onnx.time_input)")
            if inc.max_len != self.max_len:
                raise ValueError(f"incremental.max_len {inc.max_len} is not the bundle's max_len {self.max_len}")
        return self

    @property
    def reads_times(self) -> bool:
        return self.onnx.time_input is not None or self.history_transform is not None

    def named_files(self) -> list[str]:
        """Files the sections name beyond the required ones (a new section with files adds them here)."""
        named = [] if self.clusters is None else [str(self.clusters.get("file"))]
        if self.ablation is not None:
            named.append(str(self.ablation.get("file")))
        if self.text is not None:
            t = self.text
            named += [t.tokenizer, t.text_encoder.file, t.adaptor.file, t.seq_encoder.file]
        if self.incremental is not None:
            named.append(self.incremental.file)
        return named

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True, exclude_none=True) + "\n"


def check_format(raw: dict[str, Any]) -> None:
    """Refuse a manifest of a format this code does not read, saying which way the mismatch goes."""
    got = raw.get("format_version")
    if got in READABLE_FORMATS:
        return
    reads = ", ".join(str(v) for v in sorted(READABLE_FORMATS))
    if not isinstance(got, int) or isinstance(got, bool):
        raise BundleError(f"unsupported bundle format {got!r} (no integer format_version); this server reads {reads}")
    if got < min(READABLE_FORMATS):
        raise BundleError(f"bundle format {got} is older than this server reads ({reads}): {REEXPORT_HINT}")
    raise BundleError(
        f"bundle format {got} is newer than this server reads ({reads}): upgrade the server, "
        "or export with the seqrec version this server runs"
    )


def parse_manifest(raw: object) -> Manifest:
    """A decoded manifest.json -> Manifest; any defect is a BundleError naming the fields."""
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST_FILE} is not an object")
    check_format(raw)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise BundleError(f"{MANIFEST_FILE} is invalid: {problems}") from None


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate `bundle_dir/manifest.json` (format first, then the schema)."""
    path = bundle_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from exc
    return parse_manifest(raw)


def as_dict(section: Any) -> Any:
    """A manifest section as plain JSON data (a pydantic section or already a dict)."""
    return section.model_dump() if hasattr(section, "model_dump") else section
