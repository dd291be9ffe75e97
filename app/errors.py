"""Error answers shared by the routes: what the client is told, and what only the log hears.

A store outage is logged with its cause (address, exception) and answered with a fixed text
and Retry-After: a response body never carries an internal address or exception text.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError

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
