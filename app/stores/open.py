"""Opening the stores the settings ask for (the one place that chooses by store flavour)."""

from __future__ import annotations

import logging
from typing import Any

from app.settings import Settings
from app.stores.base import EventStore
from app.stores.catalog import CatalogStore, ClusterCatalog, MemoryCatalog, RedisCatalog
from app.stores.cluster import ClusterStore, is_cluster_url
from app.stores.cluster_items import ClusterItems
from app.stores.eventlog import EventLog
from app.stores.items import ItemRegistry, MemoryItems, RedisItems
from app.stores.memory import MemoryStore
from app.stores.redis import RedisStore

log = logging.getLogger("seqrec.app")


def open_store(settings: Settings) -> EventStore:
    """The event store the settings ask for: Redis, a Redis Cluster, or in process."""
    # SEQREC_EVENT_LOG=false: the window only; else the log with its retention.
    event_log = EventLog(settings.event_log_retention_s) if settings.event_log else None
    if settings.redis_url:
        url, n, ttl = settings.redis_url, settings.max_history, settings.history_ttl_s
        opts: dict[str, Any] = {
            "prefix": settings.key_prefix,
            "read_timeout": settings.redis_timeout,
            "pool_size": settings.redis_pool_size,
            "write_timeout": settings.redis_write_timeout,
            "max_excluded": settings.max_excluded,
            "event_log": event_log,
        }
        if settings.redis_cluster or is_cluster_url(url):
            wait, wait_ms = settings.redis_wait_replicas, settings.redis_wait_timeout_ms
            return ClusterStore(url, n, ttl, wait_replicas=wait, wait_timeout_ms=wait_ms, **opts)
        return RedisStore(url, n, ttl, **opts)
    log.warning("no SEQREC_REDIS_URL: using the in-process store (single process, not durable)")
    return MemoryStore(
        settings.max_history, settings.history_ttl_s, max_excluded=settings.max_excluded, event_log=event_log
    )


def open_items(settings: Settings, store: EventStore) -> ItemRegistry:
    """Where registered items and the served configuration are shared: next to `store`."""
    if isinstance(store, ClusterStore) and settings.redis_url:
        return ClusterItems(store, settings.redis_url, settings.key_prefix, settings.redis_timeout)
    if isinstance(store, RedisStore) and settings.redis_url:
        return RedisItems(store.redis, settings.redis_url, settings.key_prefix, settings.redis_timeout)
    return MemoryItems()


def open_catalog(settings: Settings, store: EventStore) -> CatalogStore:
    """Where the catalogue's attributes and availability are kept: next to `store`, as durable as events."""
    if isinstance(store, ClusterStore) and settings.redis_url:
        wait, wait_ms = settings.redis_wait_replicas, settings.redis_wait_timeout_ms
        return ClusterCatalog(store, settings.key_prefix, settings.redis_timeout, wait, wait_ms)
    if isinstance(store, RedisStore) and settings.redis_url:
        return RedisCatalog(store.redis, settings.key_prefix, settings.redis_timeout)
    return MemoryCatalog()
