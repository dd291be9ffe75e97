"""What the lifespan builds and the routes read (via typed dependencies in app/deps.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app import heap
from app.items import ItemRegistry, MemoryItems
from app.metrics import Metrics
from app.ratelimit import TokenBuckets
from app.registry import Registry
from app.settings import Settings
from app.stores import EventStore

if TYPE_CHECKING:
    from app.online import Live
    from app.userstate import UserCache


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    store: EventStore
    metrics: Metrics
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    write_limiter: TokenBuckets | None = None
    items: ItemRegistry = field(default_factory=MemoryItems)  # registered by POST /items
    live: Live | None = None  # online evaluation + A/B split (app/online.py)
    user_cache: UserCache | None = None  # None: every read encodes the history (app/userstate.py)

    def install(self, registry: Registry) -> None:
        self.registry = registry
        heap.resettle()  # the replaced registry's objects were frozen with the process's heap
