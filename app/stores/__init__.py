"""Per-user event histories behind one interface: Redis (production) or in-process (demo)."""

from app.stores.base import AppendResult, Event, EventStore, StoreUnavailable
from app.stores.memory import MemoryStore
from app.stores.redis import RedisStore

__all__ = ["AppendResult", "Event", "EventStore", "MemoryStore", "RedisStore", "StoreUnavailable"]
