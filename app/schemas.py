"""Request and response models: what /docs shows is the contract."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_ID_LENGTH = 128
# Printable ids only: no C0/C1 control characters (the store uses 0x1f as a separator).
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
# Event times must be plausible: after 1970 and before year ~5138 (guards against ms/µs mix-ups).
MAX_TIMESTAMP = 1e11


class EventIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "u42", "item_id": "2571", "timestamp": 1700000000}]},
    )

    user_id: Id
    item_id: Id
    timestamp: float | datetime | None = Field(
        None, description="Epoch seconds or ISO-8601 (naive = UTC). Default: the time the server receives it."
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
    accepted: int = Field(description="Events newly stored.")
    duplicates: int = Field(description="Events already stored before (replays): nothing changed.")
    unknown_to_model: int = Field(description="Events whose item the default model does not know (still stored).")
    model: str = Field(description="Bundle the unknown count refers to.")


class ScoredItem(BaseModel):
    item_id: str
    score: float


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
        description="New A/B split `name=bundle:weight,...` (empty string: none). Omitted: the current one, "
        "checked against the new bundles.",
    )


class ReloadOut(BaseModel):
    reloaded: bool
    default_model: str
    experiment: str | None = None
    bundles: list[BundleOut]


# An id in the URL path, validated exactly like ids in request bodies.
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]


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


class RegisteredItem(BaseModel):
    item_id: str
    title: str
    description: str | None = None
    categories: list[str] | None = None
    brand: str | None = None
    models: list[str] = Field(description="Bundles in this process that hold the item.")
