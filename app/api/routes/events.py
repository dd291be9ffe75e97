"""POST /events: validate a batch, write it in one store round trip, report what happened."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.types import Scope

from app.api.deps import ApiKey, State, WriteLimit, key_ok, key_refusal, write_rate_refusal
from app.api.errors import invalid, unavailable, validation_answer
from app.api.schemas import EventsIn, EventsOut, write_responses
from app.serving.events import event_types
from app.state import AppState
from app.stores.base import PartialAppend, StoreUnavailable

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    response_model=EventsOut,
    dependencies=[ApiKey, WriteLimit],
    responses=write_responses(
        "Store unreachable: nothing acknowledged. Nothing was stored, or on a Redis Cluster with a master down"
        " only part (the body says how many events are not); resend the batch (idempotent by event_id)"
    ),
)
async def post_events(body: EventsIn, state: State) -> EventsOut:
    """Append item events to user histories. Replays (same event_id) are no-ops; unknown items are kept.
    Each event is counted once: `accepted` (stored), `duplicates` (already stored) or `too_old`
    (older than the user's kept window). Events timed more than SEQREC_MAX_CLOCK_SKEW_S ahead of
    the server clock are refused (422, naming the event), as are events of a type that is not in
    SEQREC_EVENT_TYPES (422, naming the event and the allowed types); nothing of the batch is stored.
    A negative event (`dislike` by default) is stored but never read as history, and its item is
    never recommended to the user again."""
    return await ingest(state, body)


async def ingest(state: AppState, body: EventsIn) -> EventsOut:
    """Store a validated batch: the route and the pre-routed write share it. Raises HTTPException
    (413, 503) or RequestValidationError (an event too far ahead of the server clock, an unknown type)."""
    if len(body.events) > state.settings.max_batch:
        raise HTTPException(
            413,
            f"batch of {len(body.events)} events exceeds the limit of {state.settings.max_batch}",
        )
    now = time.time()
    skew = state.settings.max_clock_skew_s
    if skew:
        for pos, e in enumerate(body.events):
            if e.epoch is not None and e.epoch > now + skew:
                # A far-future event would stay the user's newest forever: refuse the batch, store nothing.
                msg = f"timestamp is more than {skew:g} s ahead of the server clock (SEQREC_MAX_CLOCK_SKEW_S)"
                raise invalid(("body", "events", pos, "timestamp"), msg)
    types = event_types(state.settings)
    for pos, e in enumerate(body.events):
        if not types.known(e.type):  # the allowed names, never the input
            raise invalid(("body", "events", pos, "type"), types.refusal)
    events = []
    for pos, e in enumerate(body.events):
        # Untimed events get "now", spaced by 1 µs in batch order so they keep the order they were sent in.
        ts = now + pos * 1e-6 if e.epoch is None else e.epoch
        # Without an event_id the event time identifies the event, so exact replays are still no-ops.
        eid = e.event_id if e.event_id is not None else f"t{ts:.6f}"
        events.append(types.event(e.user_id, e.item_id, ts, eid, e.type))
    try:
        result = await state.store.append(events)
    except PartialAppend as exc:
        # A Redis Cluster stored part of the batch (on the masters that answered): say so, ack nothing.
        state.metrics.store_errors.labels("append").inc()
        state.metrics.events.labels("accepted").inc(exc.stored.accepted)
        told = f"{exc.failed_events} of {len(events)} events ({len(exc.failed_users)} users) are not stored"
        raise unavailable("event store (part of the cluster)", exc, f"{told}; resend the batch (idempotent)") from exc
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("append").inc()
        raise unavailable("event store", exc, "no event of this batch is acknowledged") from exc
    if state.live is not None:  # scored in the background against what each user was served
        # A negative event is no hit of the list that showed its item.
        state.live.observe((e.user_id, e.item_id, e.timestamp) for e in events if not e.negative)
    bundle = state.registry.get(None)
    if state.experiment is None:  # one bundle answers everyone: one lookup table for the batch
        known = bundle.index_of
        unknown = sum(1 for e in events if e.item_id not in known)
    else:
        unknown = sum(1 for e in events if e.item_id not in serving_bundle(state, e.user_id).index_of)
    m = state.metrics.events
    m.labels("accepted").inc(result.accepted)
    m.labels("duplicate").inc(result.duplicates)
    m.labels("too_old").inc(result.too_old)
    m.labels("unknown_item").inc(unknown)
    return EventsOut(
        accepted=result.accepted,
        duplicates=result.duplicates,
        too_old=result.too_old,
        unknown_to_model=unknown,
        model=bundle.name,
    )


def serving_bundle(state: AppState, user_id: str) -> Any:
    """The bundle that answers this user's plain reads: their A/B variant's, else the default."""
    if state.experiment is None:
        return state.registry.get(None)
    return state.registry.get(state.experiment.assign(user_id).bundle)


# --- the pre-routed write (app.api.middleware.FastWrite) --------------------------------------------
# A batch of 500 events spent more CPU in FastAPI's body handling (json.loads, then validation
# of the Python objects) than in storing it; pydantic validates the raw JSON bytes in one pass at
# about half the cost. A body that passes is answered here as the route answers it (key, rate
# limit, then the write); one that does not (or is not sent as JSON) goes on to the route, which
# reports it as documented. Nothing with a side effect runs before that decision.
PATH = "/events"


def _json(code: int, payload: object, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    return code, json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(), headers or {}


async def plain_ingest(scope: Scope, body: bytes) -> tuple[int, bytes, dict[str, str]] | None:
    """(status, JSON body, headers) for a valid batch from an allowed caller, or None: the route answers."""
    state: AppState = scope["app"].state.seqrec
    key = None
    is_json = False
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            key = value.decode("latin-1")
        elif name == b"content-type":
            is_json = value.split(b";")[0].strip().lower() == b"application/json"
    if not is_json:
        return None
    try:
        batch = EventsIn.model_validate_json(body)
    except ValidationError:
        return None
    # A valid body: from here on the answers are the route's own (its key check, then its rate limit).
    client = scope.get("client")
    try:
        if not key_ok(state, key):
            raise key_refusal()
        refusal = write_rate_refusal(state, key, client[0] if client else None)
        if refusal is not None:
            raise refusal
        out = await ingest(state, batch)
    except HTTPException as exc:
        return _json(exc.status_code, {"detail": exc.detail}, dict(exc.headers) if exc.headers else None)
    except RequestValidationError as exc:
        return _json(*validation_answer(list(exc.errors())))
    return 200, out.model_dump_json().encode(), {}
