"""One validated Settings object, read from the environment (prefix `SEQREC_`).

Every setting belongs to one section (`SECTIONS`), and the settings table of docs/settings.md is
generated from this file (`python -m app.settings > docs/settings.md`; a test fails when they
differ). Durations are seconds, named `..._S` in the environment, except two sub-second ones in
milliseconds, named `..._MS`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# An event type's name: short and plain, so it is safe inside a stored member and in a message.
TYPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Settings(BaseSettings):
    """Service configuration. Every field can be set as `SEQREC_<FIELD>` (case-insensitive); the
    timeouts, in seconds, as `SEQREC_<FIELD>_S`."""

    model_config = SettingsConfigDict(env_prefix="SEQREC_", env_file=None, extra="ignore", populate_by_name=True)

    bundles: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Bundle directories to serve, comma-separated in the environment.",
    )
    default_model: str | None = Field(
        None, description="Bundle answering when `model` is omitted: a bundle name or model kind (default: the first)."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:port/db). Unset: the in-process store (single process, not durable).",
    )
    redis_timeout: float = Field(
        0.25,
        validation_alias="SEQREC_REDIS_TIMEOUT_S",
        gt=0,
        le=10,
        description="Connect timeout and history-read timeout: past it, popularity answers.",
    )
    redis_write_timeout: float = Field(
        2.0,
        validation_alias="SEQREC_REDIS_WRITE_TIMEOUT_S",
        gt=0,
        le=30,
        description="Timeout of one event-batch write (past it the batch is reported not stored), and of the "
        "reads behind GET /stats/online, which have no fallback answer.",
    )
    redis_cluster: bool = Field(
        False,
        description="SEQREC_REDIS_URL names Redis Cluster nodes (host:port,...); implied by a redis+cluster:// URL.",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Redis Cluster: replicas that must hold an event batch before it is acknowledged (WAIT); 0 = off.",
    )
    redis_wait_timeout_ms: int = Field(
        100, ge=1, le=60_000, description="Redis Cluster: longest WAIT for those replicas; past it, 503 (retry)."
    )
    redis_pool_size: int = Field(64, ge=1, le=10_000, description="Max connections in the Redis pool.")
    key_prefix: str = Field("seqrec:", max_length=64, description="Prefix of every Redis key the service writes.")
    max_history: int = Field(200, ge=1, le=10_000, description="Events kept per user (the last N by event time).")
    history_ttl_s: int = Field(30 * 86400, ge=1, description="A user's history expires after this long without events.")
    event_log: bool = Field(
        True,
        description="Append every event the window newly stores to the event log, in the same script call: what"
        " `seqrec snapshot` exports for training, beyond the last SEQREC_MAX_HISTORY events (docs/live-loop.md).",
    )
    event_log_retention_s: int = Field(
        7 * 86400,
        ge=60,
        description="The event log keeps the events that arrived this long ago or less (export it more often);"
        " its memory is measured in docs/live-loop.md.",
    )
    api_key: SecretStr | None = Field(None, description="When set, POST /events and /admin/* need `X-API-Key`.")
    max_batch: int = Field(1000, ge=1, le=100_000, description="Most events in one POST /events (else 413).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted (else 413).")
    max_k: int = Field(1000, ge=1, le=1000, description="Largest k accepted by GET /recommend (at most 1000).")
    ann_threshold: int = Field(
        20_000,
        ge=0,
        description="Catalogues this large use the HNSW index (IVF from 200,000 items), smaller ones BLAS.",
    )
    fast_reads: bool = Field(
        True,
        description="Answer a plain GET /recommend (no escapes, no re-ranking, valid k) and a valid POST /events"
        " batch before routing, by the routes' own code: the same answer for less CPU. Every other request"
        " (errors included) goes through FastAPI.",
    )
    reuse_port: bool = Field(
        True,
        description="Several workers: one listening socket per worker on the same port (SO_REUSEPORT, Linux), so"
        " the kernel spreads connections evenly; false: uvicorn's one shared socket (app/runtime/server.py).",
    )
    user_cache: bool = Field(
        True, description="Reuse a user's vector while the history it encodes is unchanged (docs/user-state.md)."
    )
    user_state: bool = Field(
        True,
        description="Keep a recurrent model's state per user and advance it by the new events"
        " (bundles that offer it, e.g. GRU4Rec; needs SEQREC_USER_CACHE; docs/user-state.md).",
    )
    user_cache_ttl_s: int = Field(
        86400, ge=1, description="A cached user vector expires this long after it was stored."
    )
    explain_n: int = Field(
        50, ge=1, le=1000, description="explain=true ablates this many newest history events (one batched call)."
    )
    explain_threads: int = Field(
        default_factory=lambda: 2 if _cores() >= 2 else 1,
        ge=1,
        le=64,
        description="Intra-op threads of the one large encoder call of explain=true (its own ONNX sessions; "
        "the plain path keeps one thread). Default 2 on a machine with at least 2 cores; 1 = single-threaded.",
    )
    access_log: bool = Field(True, description="Write one JSON access-log line per request on stdout.")
    opentelemetry: bool = Field(
        False,
        description="Let FastAPI's native OpenTelemetry instrumentation trace requests when a provider is configured "
        "(off: its per-request check costs CPU; Prometheus metrics are unaffected).",
    )
    write_rate_per_s: float = Field(
        0, ge=0, description="Write requests (POST /events) per second per API key and process; 0 = unlimited (429)."
    )
    write_burst: int = Field(100, ge=1, description="Write requests a key may send at once above the rate.")
    bundle_poll_s: float = Field(
        0, ge=0, description="Poll the bundle paths this often and load a changed bundle without restart; 0 = off."
    )
    experiment: str | None = Field(
        None,
        description="A/B split `name=bundle:weight,...` (weights in percent, summing to 100); unset = no experiment.",
    )
    experiment_salt: str = Field("seqrec", max_length=128, description="Salt of the user -> variant hash.")
    online_tracking: bool = Field(True, description="Remember served lists and score them against next events.")
    online_k: int = Field(10, ge=1, le=100, description="Cut-off of online hit@k / NDCG@k (lists kept this long).")
    online_ttl_s: int = Field(3600, ge=1, description="A served list counts for the user's next event this long.")
    online_batch_ms: float = Field(
        10,
        ge=0,
        le=100,
        description="Write the served lists of this many ms in one pipeline (less CPU per answer); an event that "
        "finds no list is looked up again after this window plus SEQREC_REDIS_TIMEOUT_S, so a list another "
        "process is still writing is scored. 0 = the answers of one loop turn.",
    )
    online_max_lists: int = Field(
        1000,
        ge=2,
        le=100_000,
        description="Most served lists kept per user and bundle. Each list is kept with its serve time until no "
        "event can still be scored against it (its successor is older than the look's wait plus 0.5 s), so an "
        "event is scored against the last list served before it even when the user was served again before the "
        "event was looked up; this only caps a user served faster than that many lists in that time.",
    )
    online_experiment_ttl_s: int = Field(
        14 * 86400,
        ge=60,
        description="Per-user totals of an experiment (the user-clustered statistics) expire this long after "
        "the experiment's last tracked answer.",
    )
    online_test_metric: str = Field(
        "hit_rate",
        pattern="^(hit_rate|ndcg|mrr)$",
        description="The metric of the A/B decision in GET /stats/online (hit_rate, ndcg or mrr).",
    )
    online_test_alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="False-positive bound of the sequential test (split over the comparisons with the first variant).",
    )
    online_test_effect: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Scale of the sequential test's mixture: the relative difference from the first variant it is "
        "tuned to detect soonest (tau = this x the first variant's mean).",
    )
    online_test_min_users: int = Field(
        100, ge=2, description="Users with a scored event each variant needs before the sequential test decides."
    )
    online_promote: bool = Field(
        False,
        description="Act on the sequential test (two-variant experiments): a treatment that wins on the test's "
        "metric with every guardrail holding becomes the default and the experiment ends; one that loses is "
        "withdrawn (the control becomes the default). Applied to every process like a reload; each decision is "
        "logged and listed by GET /stats/promotions.",
    )
    online_promote_check_s: float = Field(
        60, ge=1, le=86400, description="How often the promotion policy reads the test (when SEQREC_ONLINE_PROMOTE)."
    )
    online_promote_max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Guardrail: the share of GET /recommend answers that failed (5xx) in the deciding process "
        "since the experiment started must not exceed this.",
    )
    online_promote_max_p99_ratio: float = Field(
        1.5, gt=0, description="Guardrail: the treatment bundle's p99 model time at most this times the control's."
    )
    online_promote_min_coverage_ratio: float = Field(
        0.8,
        ge=0,
        description="Guardrail: the treatment's catalogue coverage (last hour) at least this times the control's.",
    )
    max_clock_skew_s: float = Field(
        86400,
        ge=0,
        description="Refuse events timed further ahead of the server clock than this (422); 0 = no limit.",
    )
    body_timeout: float = Field(
        10.0,
        validation_alias="SEQREC_BODY_TIMEOUT_S",
        gt=0,
        le=600,
        description="A request body must arrive completely within this long, else 408 and the connection closes.",
    )
    reload_ack_timeout: float = Field(
        30.0,
        validation_alias="SEQREC_RELOAD_ACK_TIMEOUT_S",
        ge=0,
        le=600,
        description="POST /admin/reload waits this long for every live worker (all replicas on the Redis) to apply.",
    )
    shutdown_timeout: float = Field(
        5.0,
        validation_alias="SEQREC_SHUTDOWN_TIMEOUT_S",
        gt=0,
        le=300,
        description="Longest wait for each background task and pool to close at shutdown.",
    )
    # Event types and negative feedback (docs/shop.md).
    event_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["view", "cart", "purchase", "dislike"],
        description="The event types POST /events and POST /recommend accept, comma-separated (an unknown one is"
        " refused, 422); a bundle that reads types numbers them 1, 2, ... in this order.",
    )
    default_event_type: str = Field(
        "view",
        description="The type of an event sent without one. Stored as events were before types existed, so older"
        " windows and log entries read as this type.",
    )
    negative_event_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["dislike"],
        description="Types that are negative feedback, comma-separated: such an event is never model input for"
        " its user, and its item is never recommended to that user again (while the user's history lives).",
    )
    exclude_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Which events keep their item out of the user's lists: `*` = every item in the kept history"
        " (seen items); or a comma-separated list of types, whose items stay excluded beyond the kept history"
        " (negative types are excluded either way). Applies to events stored from then on.",
    )
    max_excluded: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Items kept per user as excluded by negative or SEQREC_EXCLUDE_TYPES events (the oldest go).",
    )
    # The shop: catalogue state and business rules (docs/shop.md).
    rules: dict[str, str] = Field(
        default_factory=dict,
        description="Named filters, a JSON object name -> filter: `default` applies to every request, a rule named "
        "like an A/B variant to the requests that variant serves, any other when a request names it (`rule=`).",
    )
    catalog_poll_s: float = Field(
        0.2,
        gt=0,
        le=10,
        description="How often each process checks the catalogue's version in Redis (a change is served by every"
        " process within this long plus one read).",
    )
    catalog_max_batch: int = Field(
        1000, ge=1, le=10_000, description="Most items in one POST /catalog/items (else 413)."
    )
    filter_overfetch_max: int = Field(
        2000,
        ge=10,
        le=100_000,
        description="A filtered top-k asks the ANN index for at most this many candidates; beyond, the items the"
        " filter keeps are scored exactly.",
    )
    filter_exact_max: int = Field(
        20_000,
        ge=0,
        le=10_000_000,
        description="A filter keeping at most this many items (and not most of the catalogue) is answered by scoring"
        " them exactly.",
    )
    workers: int = Field(
        default_factory=_cores,
        ge=1,
        le=256,
        description="Worker processes of `python -m app.runtime.server` (the serving image's command) when "
        "`--workers` is not given; default: the CPUs this process may use.",
    )
    graceful: float = Field(
        20.0,
        validation_alias="SEQREC_GRACEFUL_S",
        ge=0,
        le=600,
        description="On SIGTERM, how long requests in flight may finish before the server exits.",
    )
    log_level: str = Field(
        "warning",
        pattern="^(critical|error|warning|info|debug|trace)$",
        description="uvicorn's log level (the JSON access log is SEQREC_ACCESS_LOG).",
    )

    @field_validator("bundles", mode="before")
    @classmethod
    def _split_paths(cls, v: object) -> object:
        if isinstance(v, str):
            return [Path(p.strip()) for p in v.split(",") if p.strip()]
        return v

    @field_validator("event_types", "negative_event_types", "exclude_types", mode="before")
    @classmethod
    def _split_names(cls, v: object) -> object:
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @model_validator(mode="after")
    def _known_types(self) -> Settings:
        types = self.event_types
        bad = [t for t in types if not TYPE_NAME.fullmatch(t)]
        if not types or len(types) > 64 or bad or len(set(types)) != len(types):
            raise ValueError("SEQREC_EVENT_TYPES: 1 to 64 distinct names of 1-64 letters, digits, '_', '-' or '.'")
        if self.default_event_type not in types:
            raise ValueError("SEQREC_DEFAULT_EVENT_TYPE must be one of SEQREC_EVENT_TYPES")
        if any(t not in types for t in self.negative_event_types):
            raise ValueError("SEQREC_NEGATIVE_EVENT_TYPES must name types of SEQREC_EVENT_TYPES")
        if self.default_event_type in self.negative_event_types:
            raise ValueError("SEQREC_DEFAULT_EVENT_TYPE cannot be negative (events sent without a type would be)")
        if self.exclude_types != ["*"] and any(t not in types for t in self.exclude_types):
            raise ValueError("SEQREC_EXCLUDE_TYPES is `*` or types of SEQREC_EVENT_TYPES")
        return self

    @field_validator("rules")
    @classmethod
    def _bounded_rules(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 100 or any(len(t) > 2000 or not 1 <= len(n) <= 128 for n, t in v.items()):
            raise ValueError("at most 100 rules, each a name of 1-128 characters and a filter of at most 2000")
        return v

    @model_validator(mode="after")
    def _need_bundle(self) -> Settings:
        if not self.bundles:
            raise ValueError("no bundle configured: set SEQREC_BUNDLES to one or more bundle directories")
        return self


# Every setting in one section: the docs table is grouped by them (a test checks each field is in one).
SECTIONS: dict[str, tuple[str, ...]] = {
    "bundles": ("bundles", "default_model", "bundle_poll_s", "ann_threshold"),
    "store": (
        "redis_url",
        "redis_cluster",
        "redis_timeout",
        "redis_write_timeout",
        "redis_wait_replicas",
        "redis_wait_timeout_ms",
        "redis_pool_size",
        "key_prefix",
        "max_history",
        "history_ttl_s",
        "event_log",
        "event_log_retention_s",
    ),
    "limits": (
        "api_key",
        "max_batch",
        "max_body_bytes",
        "max_k",
        "max_clock_skew_s",
        "write_rate_per_s",
        "write_burst",
        "body_timeout",
    ),
    "user cache": ("user_cache", "user_state", "user_cache_ttl_s", "fast_reads"),
    "online": (
        "experiment",
        "experiment_salt",
        "online_tracking",
        "online_k",
        "online_ttl_s",
        "online_batch_ms",
        "online_max_lists",
        "online_experiment_ttl_s",
        "online_test_metric",
        "online_test_alpha",
        "online_test_effect",
        "online_test_min_users",
        "online_promote",
        "online_promote_check_s",
        "online_promote_max_error_rate",
        "online_promote_max_p99_ratio",
        "online_promote_min_coverage_ratio",
    ),
    "explain": ("explain_n", "explain_threads"),
    "event types": ("event_types", "default_event_type", "negative_event_types", "exclude_types", "max_excluded"),
    "shop": ("rules", "catalog_poll_s", "catalog_max_batch", "filter_overfetch_max", "filter_exact_max"),
    "process": (
        "workers",
        "reuse_port",
        "graceful",
        "log_level",
        "access_log",
        "opentelemetry",
        "reload_ack_timeout",
        "shutdown_timeout",
    ),
}


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"SEQREC_{field.upper()}"


def settings_table() -> str:
    """docs/settings.md: every setting by section, with its variable, default and meaning."""
    lines = [
        "# Settings",
        "",
        "Environment variables of the service, prefix `SEQREC_`, by section. Generated from",
        "`app/settings.py` (`python -m app.settings > docs/settings.md`); durations are seconds (`_S`)",
        "or milliseconds (`_MS`).",
    ]
    for section, names in SECTIONS.items():
        lines += ["", f"## {section}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            f = Settings.model_fields[name]
            if f.default_factory is not None:
                default = "(computed)" if name != "bundles" else "(required)"
            elif f.default is None:
                default = "unset"
            else:
                default = f"`{f.default}`"
            text = (f.description or "").replace("|", "\\|")
            lines.append(f"| `{env_name(name)}` | {default} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
