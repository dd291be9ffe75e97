"""The store contract, shared by every implementation (tests/app/test_store_contract.py).

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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# Ids may not contain control characters (validated at the API), so US (0x1f) separates
# event id and item id inside one stored member without any escaping.
SEP = "\x1f"


class StoreUnavailable(RuntimeError):
    """The backing store could not be reached or answered an error."""


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    timestamp: float  # epoch seconds
    event_id: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int  # newly stored, still kept after trimming
    duplicates: int  # already stored (or repeated within the batch): nothing changed
    too_old: int = 0  # older than the kept window: trimmed at once, not stored


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
    return f"{ev.event_id}{SEP}{ev.item_id}"


def item_of(member: str) -> str:
    return member.rsplit(SEP, 1)[1]


def items_of(members: list[str] | list[bytes]) -> list[str]:
    """Item ids of many members at once: one join + split in C instead of a Python call per member.

    Takes raw bytes too (one UTF-8 decode for the whole history, not one per member).
    """
    if not members:
        return []
    joined = SEP.encode().join(members).decode() if isinstance(members[0], bytes) else SEP.join(members)
    return joined.split(SEP)[1::2]  # event_id, item_id, event_id, item_id, ...


def timed_items_of(pairs: list[tuple[bytes, float]] | list[tuple[str, float]]) -> tuple[list[str], list[float]]:
    """(member, score) pairs of a ZRANGE ... WITHSCORES -> (item ids, event times), oldest first."""
    if not pairs:
        return [], []
    members, scores = zip(*pairs, strict=True)
    return items_of(list(members)), [float(t) for t in scores]


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

    def log_entries(self) -> AsyncIterator[LoggedEvent]:
        """Every event of the event log, each log stream in the order it was logged."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
