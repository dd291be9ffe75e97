"""The store contract, shared by every implementation (tests/app/stores/test_store_contract.py).

- A user's history is the last `max_history` item events ordered by event time; a late
  event lands at its time position (and falls off at once when older than all N kept).
- An event is identified by (user_id, event_id, item_id); storing the same one again
  changes nothing and is counted as a duplicate. Without an explicit event_id the event
  time stands in for it, so an exact replay of a timestamped event is also a no-op.
- Every event of a batch is counted exactly once, by what happened to it:
  `accepted`: newly stored and still in the kept window after the write;
  `duplicates`: already stored before (or an earlier copy in the same batch): nothing changed;
  `too_old`: not stored before, but older than all `max_history` events kept, so trimmed at once.
  A replay of an event that has since been trimmed is `too_old`, not a duplicate: it is no
  longer stored, so nothing can recognise it. The store computes this atomically per user.
- A user's history expires `ttl_s` seconds after the last event written for them.
- `append` stores the whole batch or raises StoreUnavailable: never a silent partial loss.
- The event log (on unless the store is built with `event_log=None`; app/stores/eventlog.py):
  every event the window newly stores, `accepted` and `too_old` alike, is appended to the log in
  the same atomic step as the window write, so what is acknowledged is logged. A duplicate is
  not logged again, nor is a replay of a logged event the window no longer holds (older than
  all kept, or after the window expired) within the log's retention. `log_entries` reads it back.
- Event types: an event of the default type (`type` None) is stored exactly as before types
  existed; another type is part of the stored event (the same event id and item sent with another
  type is another event) and of its log entry. A `negative` event is stored and logged but never
  read back as history (the model never reads it). The item of an `exclude` (or negative) event
  goes to the user's exclusion set, whatever happened to the event (a duplicate or one too old for
  the window too): the last `max_excluded` such items, which expires with the window (same TTL,
  refreshed by every write) and outlives the event's trimming from the window. `read` returns the
  history and the exclusion set together (one round trip).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Ids may not contain control characters (validated at the API), so US (0x1f) separates
# event id and item id inside one stored member without any escaping.
SEP = "\x1f"
# A typed event's member: event id, FS (0x1c) or, for a negative type, ESC (0x1b), the type, US,
# item id. The event id field still holds no US, so splitting on US reads old and new members
# alike, and a member holding ESC is negative without knowing the settings that wrote it.
TYPED, NEGATIVE = "\x1c", "\x1b"


class StoreUnavailable(RuntimeError):
    """The backing store could not be reached or answered an error."""


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    timestamp: float  # epoch seconds
    event_id: str
    type: str | None = None  # None: the deployment's default type (stored as before types existed)
    negative: bool = False  # negative feedback: never read back as history; its item is excluded
    exclude: bool = False  # its item stays out of the user's lists beyond the window (negative implies it)

    @property
    def excluding(self) -> bool:
        return self.negative or self.exclude


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int  # newly stored, still kept after trimming
    duplicates: int  # already stored (or repeated within the batch): nothing changed
    too_old: int = 0  # older than the kept window: trimmed at once, not stored


class PartialAppend(StoreUnavailable):
    """Part of a batch was stored, the rest not: on a Redis Cluster, some masters stored their part
    and others did not (or not on enough replicas)."""

    def __init__(
        self, stored: AppendResult, stored_events: int, failed_users: list[str], failed_events: int, cause: str
    ) -> None:
        super().__init__(cause)
        self.stored = stored  # what the confirmed part did
        self.stored_events = stored_events
        self.failed_users = failed_users
        self.failed_events = failed_events


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One entry of the event log: the event and when the store logged it."""

    log_id: str  # "<arrival ms>-<sequence>", a Redis Stream id (increasing within one stream)
    event: Event

    @property
    def arrival(self) -> float:
        """When the store logged it (epoch seconds, ms resolution)."""
        return int(self.log_id.split("-", 1)[0]) / 1000


def member(ev: Event) -> str:
    if ev.type is None:
        return f"{ev.event_id}{SEP}{ev.item_id}"
    return f"{ev.event_id}{NEGATIVE if ev.negative else TYPED}{ev.type}{SEP}{ev.item_id}"


def parse_member(m: str) -> tuple[str, str | None, bool, str]:
    """A stored member -> (event id, type or None for the default, negative, item id)."""
    head, item = m.rsplit(SEP, 1)
    for mark in (TYPED, NEGATIVE):
        if mark in head:
            event_id, type_ = head.split(mark, 1)
            return event_id, type_, mark == NEGATIVE, item
    return head, None, False, item


def items_of(members: list[str] | list[bytes]) -> list[str]:
    """Item ids of many members at once, negative events left out: one join + split in C instead
    of a Python call per member.

    Takes raw bytes too (one UTF-8 decode for the whole history, not one per member).
    """
    return kept_items(members)[0]


def kept_items(members: list[str] | list[bytes]) -> tuple[list[str], list[int] | None]:
    """Item ids of the members that are not negative, and which members those were (None: all)."""
    if not members:
        return [], None
    joined = SEP.encode().join(members).decode() if isinstance(members[0], bytes) else SEP.join(members)
    parts = joined.split(SEP)  # event_id, item_id, event_id, item_id, ...
    if NEGATIVE not in joined:  # the common case: one scan in C
        return parts[1::2], None
    keep = [n for n, head in enumerate(parts[0::2]) if NEGATIVE not in head]
    items = parts[1::2]
    return [items[n] for n in keep], keep


def timed_items(members: list[bytes] | list[str], scores: list[float]) -> tuple[list[str], list[float]]:
    """Members and their scores (event times) -> (item ids, times) of the events that are not negative."""
    items, keep = kept_items(members)
    times = [float(t) for t in scores]
    return items, times if keep is None else [times[n] for n in keep]


def timed_items_of(pairs: list[tuple[bytes, float]] | list[tuple[str, float]]) -> tuple[list[str], list[float]]:
    """(member, score) pairs of a ZRANGE ... WITHSCORES -> (item ids, event times), oldest first."""
    if not pairs:
        return [], []
    members, scores = zip(*pairs, strict=True)
    return timed_items(list(members), list(scores))


def types_of(members: list[bytes] | list[str]) -> list[str | None]:
    """The type of each member that is not negative (None: the default type), oldest first."""
    out: list[str | None] = []
    for m in members:
        head = (m.decode() if isinstance(m, bytes) else m).rsplit(SEP, 1)[0]
        if NEGATIVE not in head:
            out.append(head.split(TYPED, 1)[1] if TYPED in head else None)
    return out


def excluded_of(members: list[Any]) -> list[str]:
    """The exclusion set's members (item ids), raw or decoded."""
    return [m.decode() if isinstance(m, bytes) else m for m in members]


@dataclass(frozen=True, slots=True)
class UserRead:
    """One read of a user: the history (negative events left out), its times when asked, and the
    items excluded from the user's lists beyond the window."""

    items: list[str]
    times: list[float] | None
    excluded: list[str]
    types: list[str | None] | None = None  # each item's event type (None: the default), when asked


async def read_history(
    store: EventStore, user_id: str, n: int | None, with_times: bool
) -> tuple[list[str], list[float] | None]:
    """The user's last n item ids and, when asked (bundles that read event times), their times."""
    if with_times:
        return await store.history_times(user_id, n)
    return await store.history(user_id, n), None


class EventStore(Protocol):
    kind: str

    async def append(self, events: list[Event]) -> AppendResult: ...

    async def history(self, user_id: str, n: int | None = None) -> list[str]:
        """The user's last n item ids (default: all kept), oldest first."""
        ...

    async def history_times(self, user_id: str, n: int | None = None) -> tuple[list[str], list[float]]:
        """`history` and each event's time (epoch seconds), for bundles that read event times."""
        ...

    async def read(
        self, user_id: str, n: int | None = None, with_times: bool = False, with_types: bool = False
    ) -> UserRead:
        """`history` (`history_times` when `with_times`) and the user's exclusion set, in one round trip;
        `with_types`: each item's event type too (bundles that read types)."""
        ...

    async def excluded(self, user_id: str) -> list[str]:
        """The items excluded from the user's lists (negative events, SEQREC_EXCLUDE_TYPES), oldest first."""
        ...

    def log_entries(self) -> AsyncIterator[LoggedEvent]:
        """Every event of the event log, each log stream in the order it was logged."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

    def shared_redis(self) -> SharedRedis | None:
        """This store as a Redis that keeps more beside each history (the user cache's entries,
        the online ledger), or None where histories are kept in process."""
        ...


class SharedRedis(EventStore, Protocol):
    """What both Redis flavours offer the structures kept next to a user's history: keys in the
    history's slot, the client that owns them, and how reads of several users may batch."""

    redis: Any  # the client (a Redis or a RedisCluster)
    read_timeout: float
    shares_connection: bool  # every user's keys on one server: reads of many users batch into one pipeline

    def key(self, user_id: str) -> str: ...

    def excluded_key(self, user_id: str) -> str: ...

    def entry_key(self, user_id: str, field: str) -> str: ...

    def user_key(self, kind: str, user_id: str) -> str:
        """`{prefix}{kind}:{user}`: any per-user key, beside the history (in its slot)."""
        ...

    async def user_client(self, user_id: str) -> Redis:
        """The client of the server that holds the user's keys."""
        ...

    def connection_failed(self) -> None: ...
