"""Every FastAPI dependency (State, ApiKey, WriteLimit), typed: the routes declare what they need,
nothing reaches into globals."""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from app.ratelimit import TokenBuckets
from app.state import AppState

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when SEQREC_API_KEY is set.")


def state_of(request: Request) -> AppState:
    """The app's state, for the hottest route, which saves a dependency level per request (see get_state)."""
    return request.app.state.seqrec


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs sync dependencies in a thread pool, a costly hop per request.
    return state_of(request)


State = Annotated[AppState, Depends(get_state)]


async def require_api_key(state: State, key: Annotated[str | None, Security(api_key_header)]) -> None:
    expected = state.settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key", headers={"WWW-Authenticate": "APIKey"}
        )


ApiKey = Depends(require_api_key)


async def limit_writes(state: State, request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """429 + Retry-After when the caller exceeds SEQREC_WRITE_RATE_PER_S (burst SEQREC_WRITE_BURST).

    A caller is its API key (hashed: the raw secret is not kept as a dict key), or its client address
    when no key is sent."""
    buckets: TokenBuckets | None = state.write_limiter
    if buckets is None:
        return
    if key is not None:
        caller = "k:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    else:
        caller = "ip:" + (request.client.host if request.client else "?")
    wait = buckets.take(caller)
    if wait > 0:
        state.metrics.rate_limited.inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"write rate limit of {buckets.rate:g}/s per API key exceeded; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


WriteLimit = Depends(limit_writes)
