"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path).

- BodyLimit: 413 before the body is parsed when Content-Length, or the bytes actually
  received (chunked uploads), exceed the limit; 408 and the connection closed when the body
  does not arrive completely within `body_timeout` seconds (a client that never finishes its
  body would otherwise hold a connection and a task forever).
- EncodedSlash: 422 for a path holding %2F. No route takes '/' inside an id (ids may not contain
  it), and without this the router would answer 404/405 for what is really a bad id.
- Liveness: GET /healthz answered before routing (the route stays declared for OpenAPI and
  405s): a probe hit every few seconds on every replica needs no route matching, dependency
  resolution or response validation, and those were most of its CPU.
- FastRead: a plain GET /recommend/{user_id} (the read most traffic is) answered before routing
  by the route's own code, when the handler can read its parameters without doubt; every other
  request goes on to FastAPI, which validates it as documented. Same answer, a third less CPU.
- FastWrite: the same for POST /events: a batch that validates straight from its JSON bytes is
  answered by the route's own code (key check, rate limit, write); anything else goes on to
  FastAPI (with its body replayed), which answers it as documented.
- Observe: per-route latency histogram (route template, never the raw path) and one JSON
  access-log line per request, without headers (no API keys) or query values. The histogram's
  labelled children are kept per (method, route, status) and the log line is formatted directly:
  `labels()` and `json.dumps` of a dict were a fifth of a /healthz request's CPU.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.runtime.logging import write_access_line
from app.runtime.metrics import Metrics

# JSON string literals of the few distinct methods, route templates and client addresses.
_quote = lru_cache(maxsize=1024)(json.dumps)


async def _send_json(send: Send, status: int, payload: dict[str, Any], close: bool = False) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # uvicorn closes the connection after a response that says so
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that first hands the app the body already read, then whatever comes next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = {"detail": f"request body exceeds {self.max_bytes} bytes"}
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > self.max_bytes:
                        await _send_json(send, 413, too_big)
                        return
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length"})
                    return
        # Read the whole body up to the limit, then replay it: also catches chunked uploads.
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            # One deadline for the whole body, not per chunk: a trickle of bytes must not keep it open.
            async with asyncio.timeout(self.body_timeout):
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    chunk = msg.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await _send_json(send, 413, too_big)
                        return
                    chunks.append(chunk)
                    more = msg.get("more_body", False)
        except TimeoutError:
            slow = {"detail": f"request body not received within {self.body_timeout:g} s"}
            await _send_json(send, 408, slow, close=True)
            return
        await self.app(scope, replaying(b"".join(chunks), receive), send)


class EncodedSlash:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2f" in raw.lower():
            await _send_json(send, 422, {"detail": "path: an id must not contain '/' (%2F)", "errors": []})
            return
        await self.app(scope, receive, send)


class Liveness:
    def __init__(self, app: ASGIApp, route: Any, body: bytes) -> None:
        self.app = app
        self.route = route  # the declared route: Observe labels the request with its template
        self.start: Message = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
        }
        self.body: Message = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.route.path and scope["method"] == "GET":
            scope["route"] = self.route
            await send(self.start)
            await send(self.body)
            return
        await self.app(scope, receive, send)


class FastRead:
    def __init__(
        self, app: ASGIApp, route: Any, prefix: str, handler: Callable[[Scope], Awaitable[bytes | None]]
    ) -> None:
        self.app = app
        self.route = route  # the declared route: Observe labels the request with its template
        self.prefix = prefix
        self.handler = handler  # the JSON body, or None: let the router answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"].startswith(self.prefix)
            and not scope.get("root_path")  # mounted under a prefix: the router knows the route path
        ):
            body = await self.handler(scope)
            if body is not None:
                scope["route"] = self.route
                headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class FastWrite:
    def __init__(
        self,
        app: ASGIApp,
        route: Any,
        path: str,
        handler: Callable[[Scope, bytes], Awaitable[tuple[int, bytes, dict[str, str]] | None]],
    ) -> None:
        self.app = app
        self.route = route
        self.path = path
        self.handler = handler  # (status, body, headers), or None: let the router answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []  # BodyLimit, outside, has bounded the body and its arrival time
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        answer = await self.handler(scope, body)
        if answer is None:
            await self.app(scope, replaying(body, receive), send)
            return
        status, payload, extra = answer
        scope["route"] = self.route
        headers = [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class Observe:
    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self._latency: dict[tuple[str, str, int], Any] = {}  # labels -> histogram child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            dt = time.perf_counter() - t0
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            key = (method, template, status)
            child = self._latency.get(key)
            if child is None:
                child = self._latency[key] = self.metrics.request_latency.labels(method, template, str(status))
            child.observe(dt)
            if self.log_requests:
                client = scope.get("client")
                host = _quote(client[0]) if client else "null"
                write_access_line(
                    f'{{"ts": {time.time():.3f}, "method": {_quote(method)}, "route": {_quote(template)}, '
                    f'"status": {status}, "ms": {dt * 1e3:.3f}, "client": {host}}}'
                )
