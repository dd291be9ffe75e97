"""Many requests to an app a TestClient runs, sent from inside its own event loop, concurrently.

A TestClient request crosses from the test's thread to the app's event loop and back: about 3 ms
of the test's CPU each, several times what the app spends answering it. A parity test over 1,000
users sends thousands; sent here, through httpx's ASGI transport on the loop the TestClient
started (same app, same lifespan, same state), they cost a fraction of that, and up to
`concurrency` are in flight at once, as they would be from real clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
from fastapi.testclient import TestClient

Request = tuple[str, dict[str, Any] | None]  # (path, query parameters)


def get_json(
    client: TestClient, requests: Sequence[Request], headers: dict[str, str] | None = None, concurrency: int = 32
) -> list[Any]:
    """The JSON bodies of GET `requests`, in order; any status but 200 fails, with the body."""

    async def run() -> list[Any]:
        transport = httpx.ASGITransport(app=client.app)
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as http:

            async def one(path: str, params: dict[str, Any] | None) -> Any:
                async with limit:
                    r = await http.get(path, params=params)
                assert r.status_code == 200, f"GET {path} {params}: {r.status_code} {r.text}"
                return r.json()

            return list(await asyncio.gather(*(one(p, q) for p, q in requests)))

    return client.portal.call(run)
