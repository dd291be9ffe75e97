"""What the lifespan builds and the routes read (via typed dependencies in app/api/deps.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.bundles.registry import Registry
from app.runtime import heap
from app.runtime.metrics import Metrics
from app.serving.ratelimit import TokenBuckets
from app.settings import Settings
from app.stores.base import EventStore
from app.stores.items import ItemRegistry, MemoryItems

if TYPE_CHECKING:
    from app.serving.catalog import Catalog
    from app.serving.experiment import Experiment
    from app.serving.online import Live
    from app.serving.usercache import UserCache


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    store: EventStore
    metrics: Metrics
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    write_limiter: TokenBuckets | None = None
    items: ItemRegistry = field(default_factory=MemoryItems)  # registered by POST /items
    live: Live | None = None  # online evaluation (app/serving/online.py)
    experiment: Experiment | None = None  # the A/B split (app/serving/experiment.py)
    user_cache: UserCache | None = None  # None: every read encodes the history (app/serving/usercache.py)
    catalog: Catalog | None = None  # attributes, availability and rules (app/serving/catalog.py)

    def install(self, registry: Registry) -> None:
        self.registry = registry
        if self.catalog is not None:
            self.catalog.attach(list(registry.bundles.values()))
        heap.resettle()  # the replaced registry's objects were frozen with the process's heap
