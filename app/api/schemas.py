"""Request and response models: what /docs shows is the contract."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, field_validator

from app.ids import ID_PATTERN, MAX_ID_LENGTH, check_id, id_rule_message, valid_id  # noqa: F401

_ID_SCHEMA = {"pattern": ID_PATTERN}
# Body ids are checked by pydantic-core's own regex engine (the same rule, tested code point by
# code point against check_id): a Python validator per id was a tenth of an ingest batch's CPU.
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, **_ID_SCHEMA}),
]
# Event times must be plausible: after 1970 and before year ~5138 (guards against ms/µs mix-ups).
MAX_TIMESTAMP = 1e11
Epoch = Annotated[float, Field(ge=0, lt=MAX_TIMESTAMP, allow_inf_nan=False)]


class EventIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "u42", "item_id": "2571", "timestamp": 1700000000}]},
    )

    user_id: Id
    item_id: Id
    timestamp: Epoch | datetime | None = Field(
        None,
        description="Epoch seconds (0 <= t < 1e11) or ISO-8601 (naive = UTC). Default: the time the server "
        "receives it. Events further ahead of the server clock than SEQREC_MAX_CLOCK_SKEW_S are refused (422).",
    )
    event_id: Id | None = Field(
        None, description="Idempotency key: a replayed event (same user, event_id and item) changes nothing."
    )

    @field_validator("timestamp", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        # JSON true/false would otherwise pass as 1.0/0.0 (lax float): the schema says number or string.
        if isinstance(v, bool):
            raise ValueError("timestamp must be a number or an ISO-8601 string, not a boolean")
        # A number out of range must not fall through to the datetime branch of the union, which
        # would read it as milliseconds (pydantic does so above 2e10) and accept it.
        if isinstance(v, int | float) and not (math.isfinite(v) and 0 <= v < MAX_TIMESTAMP):
            raise ValueError("timestamp must be epoch seconds between 0 and 1e11")
        return v

    @field_validator("timestamp")
    @classmethod
    def _epoch(cls, v: float | datetime | None) -> float | None:
        if v is None:
            return None
        if isinstance(v, datetime):
            v = (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
        if not math.isfinite(v) or not 0 <= v < MAX_TIMESTAMP:
            raise ValueError("timestamp must be epoch seconds between 0 and 1e11")
        return float(v)

    @property
    def epoch(self) -> float | None:
        """The time in epoch seconds: the validator above turned an ISO-8601 time into them."""
        return cast(float | None, self.timestamp)


class EventsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"user_id": "u42", "item_id": "2571", "timestamp": 1700000000, "event_id": "e-1"},
                        {"user_id": "u42", "item_id": "1196", "timestamp": "2023-11-14T22:15:00Z"},
                    ]
                }
            ]
        },
    )

    events: list[EventIn] = Field(min_length=1, description="One batch; more than SEQREC_MAX_BATCH gives 413.")


class EventsOut(BaseModel):
    """Every event of the batch is counted once: accepted + duplicates + too_old = the batch size."""

    accepted: int = Field(description="Events newly stored and inside the user's kept window after this write.")
    duplicates: int = Field(
        description="Events already stored (replays, or repeated within the batch): nothing changed."
    )
    too_old: int = Field(
        0,
        description="Events not stored before but older than all SEQREC_MAX_HISTORY events kept for the user: "
        "dropped at once (also a replay of an event trimmed since: the store no longer holds it).",
    )
    unknown_to_model: int = Field(description="Events whose item the default model does not know (still stored).")
    model: str = Field(description="Bundle the unknown count refers to.")


class Because(BaseModel):
    item_id: str = Field(description="The item of one history event.")
    age: int = Field(description="0 = the newest event of the history, 1 = the one before, ...")
    contribution: float = Field(description="score(item | history) - score(item | history without this event).")
    weight: float = Field(description="contribution / the sum of the positive contributions of the N newest events.")


class ScoredItem(BaseModel):
    item_id: str
    score: float
    because: list[Because] | None = Field(
        None, description="With explain=true: the history events that raised this score most (docs/explanations.md)."
    )


class RecommendOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u42",
                    "items": [{"item_id": "2858", "score": 7.31}, {"item_id": "260", "score": 6.95}],
                    "model": "sasrec",
                    "bundle": "sasrec-ml1m",
                    "version": "20261123-170102",
                    "source": "model",
                    "history_length": 2,
                }
            ]
        }
    )

    user_id: str
    items: list[ScoredItem]
    model: str = Field(description="Model kind from the bundle manifest.")
    bundle: str = Field(description="Bundle name.")
    version: str = Field(description="Bundle version (export time).")
    source: Literal["model", "popularity"] = Field(
        description="`model`, or `popularity` for users without usable history or when the store is unreachable."
    )
    history_length: int = Field(description="History items the model knew and used.")
    fallback: Literal["no_history", "store_unavailable"] | None = Field(
        None, description="Why popularity answered: no usable history, or the event store is unreachable (degraded)."
    )
    variant: str | None = Field(
        None,
        description="Experiment variant that served: a SEQREC_EXPERIMENT name, `explicit` when `model` was given, "
        "`default` outside an experiment.",
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class BundleOut(BaseModel):
    name: str
    model: str
    version: str
    num_items: int
    dim: int
    max_len: int
    path: str


class Ready(BaseModel):
    ready: bool
    store: str
    store_ok: bool
    default_model: str | None
    bundles: list[BundleOut]


class ReloadIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{}, {"bundles": ["artifacts/sasrec-ml1m-v2"]}]}
    )

    bundles: list[str] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="Bundle directories to serve instead (default: reload the configured ones).",
    )
    default_model: str | None = None
    experiment: str | None = Field(
        None,
        max_length=2000,
        description="New A/B split `name=bundle:weight,...` (empty string: none). Omitted: the current one, "
        "checked against the new bundles.",
    )


class ReloadReach(BaseModel):
    """Which API processes serve the new configuration. With Redis the configuration is stored and
    announced to every process on the same Redis and key prefix (all workers, all replicas);
    processes started later load it too. With the in-process store there is one process."""

    scope: Literal["process", "redis"] = Field(
        description="`process`: in-process store, this one process is all there is; `redis`: every process "
        "sharing the Redis and key prefix."
    )
    generation: int = Field(description="Configuration generation (increases with every reload).")
    live: int = Field(description="Processes that heartbeat within the last 10 s (or acknowledged).")
    applied: list[str] = Field(description="Processes (host:pid:id) serving this generation.")
    rejected: dict[str, str] = Field(description="Processes that could not load it (they keep their bundles).")
    pending: list[str] = Field(description="Live processes that had not acknowledged within the wait.")
    complete: bool = Field(description="Every live process applied it.")


class ReloadOut(BaseModel):
    reloaded: bool
    default_model: str
    experiment: str | None = None
    bundles: list[BundleOut]
    reached: ReloadReach


# An id in the URL path, validated exactly like ids in request bodies.
IdPath = Annotated[
    str,
    Path(min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra=_ID_SCHEMA),
    AfterValidator(check_id),
]


# The list-length and model-choice query parameters of the read routes (recommend, similar items).
TopK = Annotated[int, Query(ge=1, le=1000, description="How many items.")]
ModelQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_ID_LENGTH,
        description="Bundle name or model kind (default model if omitted). A kind names the default bundle "
        "when that bundle has it, else the one bundle that has it; a kind that several other bundles share "
        "is refused (422) with the bundle names to choose from.",
    ),
]


class ErrorOut(BaseModel):
    detail: str


def write_responses(unavailable: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error responses shared by every write route (API key, limits, rate limit, store down)."""
    return {
        401: {"model": ErrorOut, "description": "API key required"},
        413: {"model": ErrorOut, "description": "Batch or body too large"},
        429: {"model": ErrorOut, "description": "Write rate limit of this API key exceeded (Retry-After)"},
        503: {"model": ErrorOut, "description": unavailable},
    }


# Printable text (no control characters other than tab/newline), bounded.
TEXT_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"


class ItemIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "item_id": "B0NEW001",
                    "title": "Recycled paper notebook, 5 pack",
                    "categories": ["Office Products", "Paper"],
                    "brand": "Acme",
                }
            ]
        },
    )

    item_id: Id
    title: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=TEXT_PATTERN)]
    description: Annotated[str, StringConstraints(max_length=5000, pattern=TEXT_PATTERN)] | None = None
    categories: list[Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=TEXT_PATTERN)]] | None = (
        Field(None, max_length=20)
    )
    brand: Annotated[str, StringConstraints(max_length=200, pattern=TEXT_PATTERN)] | None = None


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1, description="One batch; more than 100 items gives 413.")


class ItemAdded(BaseModel):
    item_id: str
    models: list[str] = Field(description="Bundles that can now recommend this item (those with a text encoder).")


class ItemsOut(BaseModel):
    registered: int = Field(description="Items stored in the registry (every API process picks them up).")
    items: list[ItemAdded]


class ItemDeleted(BaseModel):
    item_id: str
    models: list[str] = Field(description="Bundles in this process that served the item until now.")


class RegisteredItem(BaseModel):
    item_id: str
    title: str
    description: str | None = None
    categories: list[str] | None = None
    brand: str | None = None
    models: list[str] = Field(description="Bundles in this process that hold the item.")


# The list-shape parameters of GET /recommend (app/serving/diversity.py, docs/explanations.md).
DiversifyQuery = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="MMR re-ranking: λ in [0, 1] trades model score (1 = none) against similarity to the items "
        "already listed (cosine of item vectors). See docs/explanations.md.",
    ),
]
MaxPerClusterQuery = Annotated[
    int | None,
    Query(ge=1, le=1000, description="At most this many items from one item cluster (bundles exported with clusters)."),
]
