"""Per-user event histories behind one interface: Redis (production) or in-process (demo)."""

from app.stores.base import AppendResult, Event, EventStore, PartialAppend, StoreUnavailable
from app.stores.cluster import ClusterStore, is_cluster_url
from app.stores.memory import MemoryStore
from app.stores.redis import RedisStore

__all__ = [
    "AppendResult",
    "ClusterStore",
    "Event",
    "EventStore",
    "MemoryStore",
    "PartialAppend",
    "RedisStore",
    "StoreUnavailable",
    "is_cluster_url",
]
