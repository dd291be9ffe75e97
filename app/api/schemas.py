"""Request and response models: what /docs shows is the contract."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

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
# An event type's shape; whether the deployment knows it is checked by the route (SEQREC_EVENT_TYPES).
EventType = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class EventIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": "u42", "item_id": "2571", "timestamp": 1700000000},
                {"user_id": "u42", "item_id": "1196", "timestamp": 1700000300, "type": "purchase"},
            ]
        },
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
    type: EventType | None = Field(
        None,
        description="The event type, one of SEQREC_EVENT_TYPES (default `view, cart, purchase, dislike`); omitted:"
        " SEQREC_DEFAULT_EVENT_TYPE (`view`). An unknown type is refused (422, naming the allowed ones). A negative"
        " type (SEQREC_NEGATIVE_EVENT_TYPES, default `dislike`) is never used as the user's history, and its item is"
        " never recommended to the user again (docs/shop.md, Event types and negative feedback).",
        examples=["purchase"],
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
                        {"user_id": "u42", "item_id": "260", "timestamp": 1700000600, "type": "dislike"},
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
    filtered: int | None = Field(
        None,
        description="Only when rules applied (a filter, the deployment's rules, unavailable items, `exclude`): how "
        "many of the model's items they removed from consideration (docs/shop.md).",
    )
    rules: Literal["applied", "stale", "not_applied"] | None = Field(
        None,
        description="Only when rules applied: `applied`; `stale`: applied from the last catalogue this process read "
        "(the catalogue store is unreachable); `not_applied`: no catalogue read yet, so only `exclude` applied.",
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


# --- GET /stats/online (app/api/routes/stats.py; the statistics: app/serving/abtest.py) -----------------
class VariantStats(BaseModel):
    bundle: str
    variant: str = Field(description="Experiment variant; `default` outside an experiment, `explicit` for ?model=.")
    served: int = Field(description="Lists served (and remembered) in the window.")
    scored: int = Field(description="Served lists followed by the user's next event, which scored them.")
    users: int = Field(description="Distinct users with a scored list in the window (approximate with Redis).")
    hits: int = Field(description="Scored lists that held the next item within the top k.")
    hit_rate: float | None = Field(description="hits / scored (HR@k); null before anything was scored.")
    hit_rate_ci95: tuple[float, float] | None = Field(
        description="95% Wilson interval of the hit rate, treating events as independent (optimistic when users "
        "make many events: the experiment's user-clustered intervals are in `experiment_test`)."
    )
    mrr: float | None = Field(description="Mean reciprocal rank of the next item (0 when not served).")
    ndcg: float | None = Field(description="Mean NDCG@k of the next item.")
    distinct_items: int = Field(description="Distinct items served in the window (approximate with Redis).")
    coverage: float | None = Field(description="distinct_items / catalogue size of the bundle (null if not loaded).")


class ArmStats(BaseModel):
    """One variant of the running experiment, since it started, with intervals clustered by user."""

    variant: str
    bundle: str
    users_served: int = Field(description="Users served at least one list.")
    users: int = Field(description="Users with at least one scored list: the units of the statistics.")
    served: int
    scored: int = Field(description="Scored lists (events).")
    hit_rate: float | None
    hit_rate_ci95: tuple[float, float] | None = Field(description="95%, delta method over users (ratio of sums).")
    ndcg: float | None
    ndcg_ci95: tuple[float, float] | None
    mrr: float | None
    mrr_ci95: tuple[float, float] | None


class ComparisonOut(BaseModel):
    """A variant against the first variant on the test's metric (treatment = this variant, control = the first)."""

    variant: str
    against: str
    metric: str
    difference: float | None = Field(description="This variant's metric minus the first variant's.")
    difference_ci95: tuple[float, float] | None = Field(description="95%, clustered by user (delta method).")
    relative: float | None = Field(description="difference / the first variant's metric.")
    likelihood_ratio: float | None = Field(description="The mixture SPRT's likelihood ratio (Λ) of a difference.")
    p_value: float | None = Field(description="min(1, 1/Λ): always valid, may be read at every look.")
    verdict: Literal["treatment better", "control better", "no difference yet"] = Field(
        description="`treatment better` / `control better` once p_value <= alpha / comparisons and both variants "
        "have min_users users; otherwise `no difference yet`."
    )


class ExperimentTestOut(BaseModel):
    experiment: str
    scope: str = Field(description="Key of the experiment's per-user totals (a hash of its spec and salt).")
    started_at: float | None = Field(description="Epoch seconds of its first tracked answer (null before one).")
    metric: str = Field(description="The decision's metric (SEQREC_ONLINE_TEST_METRIC).")
    alpha: float
    effect: float = Field(description="The mixture's scale, relative to the first variant (SEQREC_ONLINE_TEST_EFFECT).")
    min_users: int
    variants: list[ArmStats]
    comparisons: list[ComparisonOut]


class OnlineStatsOut(BaseModel):
    window_minutes: int
    k: int = Field(description="Cut-off of hit@k and NDCG@k (SEQREC_ONLINE_K).")
    unserved_events: int = Field(description="Events with no remembered list before them: not counted as misses.")
    experiment: str | None = Field(description="The experiment now splitting the traffic, if any.")
    variants: list[VariantStats]
    experiment_test: ExperimentTestOut | None = Field(
        None, description="The running experiment since it started: user-clustered statistics and the decision."
    )


class PromotionDecision(BaseModel):
    at: float = Field(description="Epoch seconds.")
    experiment: str
    scope: str
    action: Literal["promote", "withdraw", "hold"] = Field(
        description="promote: the treatment became the default and the experiment ended; withdraw: the control "
        "became the default and the experiment ended; hold: the treatment won but a guardrail failed (kept running)."
    )
    variant: str = Field(description="The treatment the decision is about.")
    bundle: str = Field(description="The bundle that serves by default after it (hold: the treatment's).")
    reason: str
    metric: str
    difference: float | None
    difference_ci95: tuple[float, float] | None
    p_value: float | None
    guardrails: dict[str, float | None] = Field(description="What was measured: error rate, p99 and coverage.")
    generation: int | None = Field(description="The configuration it installed (promote, withdraw).")


class PromotionsOut(BaseModel):
    enabled: bool = Field(description="SEQREC_ONLINE_PROMOTE.")
    check_s: float
    metric: str
    guardrails: dict[str, float]
    decisions: list[PromotionDecision] = Field(description="Newest first (the last 100 are kept).")


# --- the shop: business rules on the read routes, anonymous sequences, the catalogue (docs/shop.md) ---
MAX_FILTER_CHARS = 2000
FilterQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_FILTER_CHARS,
        description="Only items whose catalogue attributes pass this filter, e.g. "
        '`category in ("shoes","bags") and price < 100` (grammar: docs/shop.md). A filter that does not parse, '
        "names an unknown attribute or compares a value of another kind is refused (422, naming the token and "
        "its position).",
        examples=['category in ("shoes","bags") and price < 100'],
    ),
]
ExcludeQuery = Annotated[
    list[Id] | None,
    Query(max_length=1000, description="Item ids never to return (repeat the parameter: `exclude=a&exclude=b`)."),
]
IncludeUnavailableQuery = Annotated[
    bool, Query(description="Also return items the catalogue marks unavailable (never, by default).")
]
RuleQuery = Annotated[
    str | None,
    Query(max_length=128, description="Also apply this named rule of the deployment (SEQREC_RULES)."),
]


class SequenceIn(BaseModel):
    """An anonymous visitor's items: a list for them, without a user id and without storing anything."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"items": ["2571", "1196", "260"], "k": 5},
                {
                    "items": ["2571", "1196"],
                    "times": [1700000000, 1700000300],
                    "k": 10,
                    "filter": 'genre = "Comedy" and year >= 1990',
                    "exclude": ["2858"],
                },
                {"items": ["2571", "1196", "260"], "types": ["view", "purchase", "dislike"], "k": 5},
            ]
        },
    )

    items: list[Id] = Field(
        max_length=10_000,
        description="Item ids, oldest first (ordered by `times` when given). At most SEQREC_MAX_HISTORY (else 422). "
        "Empty, or only ids the model does not know: the most popular items answer (`fallback: no_history`).",
    )
    times: list[Annotated[float, Field(ge=0, lt=MAX_TIMESTAMP, allow_inf_nan=False, strict=True)]] | None = Field(
        None,
        max_length=10_000,
        description="Epoch seconds of each item, one per item (bundles that read event times use them; without "
        "them every item counts as now).",
    )
    types: list[EventType] | None = Field(
        None,
        max_length=10_000,
        description="The event type of each item, one per item, as POST /events takes them (omitted: every item is"
        " of SEQREC_DEFAULT_EVENT_TYPE; an unknown type is refused, 422). Items of a negative type are not read by"
        " the model and never returned; items of SEQREC_EXCLUDE_TYPES are never returned.",
    )
    k: int = Field(10, ge=1, le=1000, description="How many items.")
    model: str | None = Field(None, max_length=MAX_ID_LENGTH, description="Bundle name or model kind.")
    exclude_seen: bool = Field(True, description="Drop the sent items from the answer.")
    filter: str | None = Field(None, max_length=MAX_FILTER_CHARS, description="As GET /recommend's `filter`.")
    exclude: list[Id] = Field(default_factory=list, max_length=1000, description="Item ids never to return.")
    include_unavailable: bool = Field(False, description="Also return items the catalogue marks unavailable.")
    rule: str | None = Field(None, max_length=128, description="Also apply this named rule (SEQREC_RULES).")

    @model_validator(mode="after")
    def _one_time_per_item(self) -> SequenceIn:
        if self.times is not None and len(self.times) != len(self.items):
            raise ValueError("times: one time per item")
        if self.types is not None and len(self.types) != len(self.items):
            raise ValueError("types: one type per item")
        return self


class SequenceOut(BaseModel):
    """GET /recommend's answer without a user: the same fields, computed from the sent items."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{"item_id": "2858", "score": 7.31}, {"item_id": "260", "score": 6.95}],
                    "model": "sasrec",
                    "bundle": "sasrec-ml1m",
                    "version": "20261123-170102",
                    "source": "model",
                    "history_length": 3,
                    "fallback": None,
                    "variant": "default",
                    "filtered": 3105,
                    "rules": "applied",
                }
            ]
        }
    )

    items: list[ScoredItem]
    model: str
    bundle: str
    version: str
    source: Literal["model", "popularity"] = Field(description="`popularity` when no sent item is known.")
    history_length: int = Field(description="Sent items the model knew and used.")
    fallback: Literal["no_history"] | None = None
    variant: str | None = Field(None, description="`explicit` when `model` was given, else `default`.")
    filtered: int | None = Field(None, description="As in GET /recommend: only when rules applied.")
    rules: Literal["applied", "stale", "not_applied"] | None = Field(None, description="As in GET /recommend.")


ATTRIBUTE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_ATTRIBUTE_VALUE = {
    "anyOf": [
        {"type": "string", "maxLength": 1000},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "array", "items": {"type": "string", "maxLength": 1000}, "maxItems": 100},
        {"type": "null"},
    ]
}
_ATTRIBUTES = {
    "type": "object",
    "description": "Attributes: a string, a number, true/false or a list of strings each; an attribute's kind is "
    "fixed by its first value; null is no value (in a change: remove the attribute). `available` (boolean, default "
    "true) says whether the item may be served.",
    "properties": {"available": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
    "propertyNames": {"pattern": ATTRIBUTE_NAME_PATTERN},
    "additionalProperties": _ATTRIBUTE_VALUE,
    "maxProperties": 100,
}
CatalogRow = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            **_ATTRIBUTES,
            "properties": {
                "item_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, **_ID_SCHEMA},
                "available": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
            },
            "required": ["item_id"],
            "maxProperties": 101,
        }
    ),
]
CatalogAttributes = Annotated[dict[str, Any], WithJsonSchema(_ATTRIBUTES)]


class CatalogItemsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"item_id": "B0001", "category": "shoes", "price": 79.0, "tags": ["sale"], "available": True},
                        {"item_id": "B0002", "category": "bags", "price": 129.5, "available": False},
                    ]
                }
            ]
        },
    )

    items: list[CatalogRow] = Field(
        min_length=1,
        description="Whole records (each replaces what the item had). More than SEQREC_CATALOG_MAX_BATCH gives 413. "
        "All or nothing: one bad row refuses the batch (422 listing the bad rows and fields).",
    )


class CatalogWriteOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"stored": 2, "version": 8}]})

    stored: int = Field(description="Items written (a repeated item id counts once: its last row wins).")
    version: int = Field(
        description="The catalogue's version after this write; every API process serves it within "
        "about SEQREC_CATALOG_POLL_S."
    )


class CatalogItemOut(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"item_id": "B0001", "available": True, "category": "shoes", "price": 79.0, "tags": ["sale"]}]
        },
    )

    item_id: str
    available: bool


class CatalogStatusOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 8,
                    "items": 120000,
                    "attributes": {"available": "boolean", "category": "string", "price": "number", "tags": "list"},
                    "state": "current",
                    "rules": {"default": 'category != "adult"'},
                }
            ]
        }
    )

    version: int = Field(description="The version this process serves.")
    items: int = Field(description="Items with a record in this process's catalogue.")
    attributes: dict[str, Literal["string", "number", "boolean", "list"]] = Field(
        description="Every attribute a filter may name, with its kind."
    )
    state: Literal["current", "stale", "loading"] = Field(
        description="`stale`: the catalogue store is unreachable and rules use the last catalogue read; `loading`: "
        "none read yet."
    )
    rules: dict[str, str] = Field(description="The deployment's named rules (SEQREC_RULES).")
