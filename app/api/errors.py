"""Error answers shared by the routes: what the client is told, and what only the log hears.

Domain errors raised below the edge become HTTP here, in one place (`install`): an unknown or
ambiguous model and a request the deployment cannot honour are 422 with the error's message
(which never repeats client input).

A store outage is logged with its cause (address, exception) and answered with a fixed text
and Retry-After: a response body never carries an internal address or exception text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.bundles.registry import UnknownModel
from app.ids import ID_PATTERN, id_rule_message
from app.serving.errors import Refused

log = logging.getLogger("seqrec.app")
RETRY_AFTER_S = 1


def unavailable(what: str, exc: BaseException, consequence: str = "") -> HTTPException:
    """503 for an unreachable store: the cause goes to the log, the client learns what and when to retry."""
    log.warning("%s unavailable: %s", what, exc)
    tail = f"; {consequence}" if consequence else ""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"{what} unavailable{tail}; retry after {RETRY_AFTER_S} s",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def invalid(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    """A 422 raised by a route, in the same shape (and through the same handler) as pydantic's."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


def _named(e: dict[str, Any]) -> dict[str, Any]:
    """One error as answered: location, message, type; an id's pattern error says which rule it broke."""
    msg, kind = e.get("msg", ""), e.get("type", "")
    if kind == "string_pattern_mismatch" and (e.get("ctx") or {}).get("pattern") == ID_PATTERN:
        msg, kind = f"Value error, {id_rule_message(e.get('input'))}", "value_error"
    return {"loc": list(e.get("loc", ())), "msg": msg, "type": kind}


def validation_answer(raw: Sequence[Any]) -> tuple[int, dict[str, Any]]:
    """Status and body for pydantic/FastAPI validation errors: 400 when the body is not JSON at
    all (a malformed request), else 422 naming the first failing field, without echoing inputs."""
    if any(e.get("type") == "json_invalid" for e in raw):
        where = next(e for e in raw if e.get("type") == "json_invalid").get("loc", ())
        pos = where[1] if len(where) > 1 else "?"
        return 400, {"detail": f"request body is not valid JSON (at character {pos})"}
    errors = [_named(e) for e in raw]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    detail = f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
    return 422, {"detail": detail, "errors": errors[:20]}


# Domain error -> status: the one table (the routes document each in their `responses`).
DOMAIN_ERRORS: dict[type[Exception], int] = {UnknownModel: 422, Refused: 422}


def install(app: FastAPI) -> None:
    """Answer every domain error with its status and message."""

    async def answer(_: Request, exc: Exception) -> JSONResponse:
        code = next(c for t, c in DOMAIN_ERRORS.items() if isinstance(exc, t))
        return JSONResponse({"detail": str(exc)}, status_code=code)

    for kind in DOMAIN_ERRORS:
        app.add_exception_handler(kind, answer)
