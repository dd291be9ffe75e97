"""Every FastAPI dependency (State, ApiKey, WriteLimit), typed: the routes declare what they need,
nothing reaches into globals."""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from app.serving.ratelimit import TokenBuckets
from app.state import AppState

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when SEQREC_API_KEY is set.")


def state_of(request: Request) -> AppState:
    """The app's state, for the hottest route, which saves a dependency level per request (see get_state)."""
    state: AppState = request.app.state.seqrec
    return state


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs sync dependencies in a thread pool, a costly hop per request.
    return state_of(request)


State = Annotated[AppState, Depends(get_state)]


def key_ok(state: AppState, key: str | None) -> bool:
    """Whether `key` opens the write routes (always, when no SEQREC_API_KEY is set)."""
    expected = state.settings.api_key
    return expected is None or (
        key is not None and secrets.compare_digest(key.encode(), expected.get_secret_value().encode())
    )


def key_refusal() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key", headers={"WWW-Authenticate": "APIKey"}
    )


async def require_api_key(state: State, key: Annotated[str | None, Security(api_key_header)]) -> None:
    if not key_ok(state, key):
        raise key_refusal()


ApiKey = Depends(require_api_key)


def write_rate_refusal(state: AppState, key: str | None, host: str | None) -> HTTPException | None:
    """The 429 (+ Retry-After) when the caller exceeds SEQREC_WRITE_RATE_PER_S (burst
    SEQREC_WRITE_BURST), else None; takes a token when allowed.

    A caller is its API key (hashed: the raw secret is not kept as a dict key), or its client address
    when no key is sent."""
    buckets: TokenBuckets | None = state.write_limiter
    if buckets is None:
        return None
    caller = "k:" + hashlib.sha256(key.encode()).hexdigest()[:16] if key is not None else "ip:" + (host or "?")
    wait = buckets.take(caller)
    if wait <= 0:
        return None
    state.metrics.rate_limited.inc()
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"write rate limit of {buckets.rate:g}/s per API key exceeded; retry later",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


async def limit_writes(state: State, request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    refusal = write_rate_refusal(state, key, request.client.host if request.client else None)
    if refusal is not None:
        raise refusal


WriteLimit = Depends(limit_writes)
