"""Typed dependencies: the routes declare what they need, nothing reaches into globals."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from app.state import AppState

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when SEQREC_API_KEY is set.")


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs sync dependencies in a thread pool, a costly hop per request.
    return request.app.state.seqrec


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
