"""In-process store: the embedded default when no Redis URL is set.

Single process only (each uvicorn worker would hold its own copy) and not durable (a
restart forgets every history). Meant for the demo and for tests, not production.
The event log is kept in process too, with the Redis store's rules (app/stores/eventlog.py):
what the window newly stores is logged, and a replay of a logged event the window no longer holds
is recognised by an index of the events logged, per retention period.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.stores.base import AppendResult, Event, LoggedEvent, UserRead, items_of, member, timed_items, types_of
from app.stores.eventlog import EventLog, default_log


def logged(ev: Event) -> Event:
    """An event as its log entry reads back (app/stores/eventlog.py: `entry_event`): the type is
    kept, the roles the deployment gave it are not."""
    return Event(ev.user_id, ev.item_id, ev.timestamp, ev.event_id, ev.type)


class MemoryStore:
    kind = "memory"

    def __init__(
        self,
        max_history: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        event_log: EventLog | None = default_log(),  # frozen: one shared default is safe
        wall: Callable[[], float] = time.time,
        max_excluded: int = 1000,
    ) -> None:
        self.max_history = max_history
        self.max_excluded = max_excluded
        self.ttl_s = ttl_s
        self._clock = clock
        self.event_log = event_log
        self._wall = wall  # the log's arrival times (epoch), as Redis stamps stream entries
        self._log: deque[LoggedEvent] = deque()
        self._last_id = (0, -1)
        self._logged: dict[tuple[str, int], set[str]] = defaultdict(set)  # (user, period) -> members logged
        self._hist: dict[str, list[tuple[float, str]]] = {}  # sorted by (timestamp, member) like a Redis zset
        self._members: dict[str, set[str]] = {}
        self._excluded: dict[str, dict[str, float]] = {}  # item -> the newest excluding event's time
        self._touched: dict[str, float] = {}
        self._writes = 0

    def _expire(self, user: str, now: float) -> None:
        t = self._touched.get(user)
        if t is not None and now - t >= self.ttl_s:
            self._hist.pop(user, None)
            self._members.pop(user, None)
            self._excluded.pop(user, None)
            self._touched.pop(user, None)

    def _sweep(self, now: float) -> None:
        # Occasional full pass so idle users do not accumulate forever.
        for user in [u for u, t in self._touched.items() if now - t >= self.ttl_s]:
            self._expire(user, now)

    async def append(self, events: list[Event]) -> AppendResult:
        now = self._clock()
        added = too_old = 0
        by_user: dict[str, list[Event]] = defaultdict(list)
        for ev in events:
            by_user[ev.user_id].append(ev)
        for user, evs in by_user.items():
            self._expire(user, now)
            empty = not self._hist.get(user)
            hist = self._hist.setdefault(user, [])
            seen = self._members.setdefault(user, set())
            fresh: list[Event] = []
            for ev in evs:
                m = member(ev)
                if m in seen:
                    continue  # stored before, or an earlier copy in this batch
                seen.add(m)
                bisect.insort(hist, (ev.timestamp, m))
                fresh.append(ev)
            gone: set[str] = set()
            if len(hist) > self.max_history:
                gone = {m for _, m in hist[: len(hist) - self.max_history]}
                seen -= gone
                del hist[: len(hist) - self.max_history]
            kept = sum(1 for ev in fresh if member(ev) not in gone)  # what survived the trim, like the Redis script
            added += kept
            too_old += len(fresh) - kept
            self._exclude(user, [ev for ev in evs if ev.excluding])
            self._touched[user] = now
            if self.event_log is not None:
                self._log_events(self.event_log, user, fresh, gone, empty)
        self._writes += 1
        if self._writes % 1000 == 0:
            self._sweep(now)
            if self.event_log is not None:
                self._forget_logged(self.event_log)
        return AppendResult(accepted=added, duplicates=len(events) - added - too_old, too_old=too_old)

    def _exclude(self, user: str, evs: list[Event]) -> None:
        """The Redis script's exclusion step: every excluding event's item, newest time kept, the last
        `max_excluded`; it expires with the window (dropped by `_expire`)."""
        if not evs:
            return
        away = self._excluded.setdefault(user, {})
        for ev in evs:
            away[ev.item_id] = max(ev.timestamp, away.get(ev.item_id, ev.timestamp))
        if len(away) > self.max_excluded:
            newest = sorted(away.items(), key=lambda kv: (kv[1], kv[0]))[-self.max_excluded :]
            self._excluded[user] = dict(newest)

    def _log_events(self, log: EventLog, user: str, fresh: list[Event], gone: set[str], empty: bool) -> None:
        """The Redis script's log step: log what is new to the window, unless the window could not
        have recognised it (too old, or the window was empty) and the index has it."""
        wall = self._wall()
        period = int(wall // log.retention_s)
        this = self._logged[(user, period)]
        before = self._logged.get((user, period - 1), set())
        for ev in fresh:
            m = member(ev)
            if not ((m in gone or empty) and (m in this or m in before)):
                self._log.append(LoggedEvent(self._next_id(wall), logged(ev)))
                this.add(m)
        floor = int((wall - log.retention_s) * 1000)
        while self._log and int(self._log[0].log_id.split("-")[0]) < floor:
            self._log.popleft()

    def _forget_logged(self, log: EventLog) -> None:
        """Drop the index periods Redis would have expired (two periods on)."""
        period = int(self._wall() // log.retention_s)
        for key in [k for k in self._logged if k[1] < period - 1]:
            del self._logged[key]

    def _next_id(self, wall: float) -> str:
        """A stream id: arrival ms, and a sequence number within the ms; always increasing."""
        ms = max(int(wall * 1000), self._last_id[0])
        self._last_id = (ms, self._last_id[1] + 1 if ms == self._last_id[0] else 0)
        return f"{ms}-{self._last_id[1]}"

    async def log_entries(self) -> AsyncIterator[LoggedEvent]:
        """Every event of the log, in the order it was logged."""
        for entry in list(self._log):
            yield entry

    def _tail(self, user_id: str, n: int | None) -> list[Any]:
        """The last n (time, member) pairs of the user's history."""
        self._expire(user_id, self._clock())
        hist = self._hist.get(user_id, [])
        return hist if n is None else hist[-n:]

    async def history(self, user_id: str, n: int | None = None) -> list[str]:
        return items_of([m for _, m in self._tail(user_id, n)])

    async def history_times(self, user_id: str, n: int | None = None) -> tuple[list[str], list[float]]:
        tail = self._tail(user_id, n)
        return timed_items([m for _, m in tail], [t for t, _ in tail])

    async def read(
        self, user_id: str, n: int | None = None, with_times: bool = False, with_types: bool = False
    ) -> UserRead:
        tail = self._tail(user_id, n)
        members = [m for _, m in tail]
        types = types_of(members) if with_types else None
        if with_times:
            items, times = timed_items(members, [t for t, _ in tail])
            return UserRead(items, times, await self.excluded(user_id), types)
        return UserRead(items_of(members), None, await self.excluded(user_id), types)

    async def excluded(self, user_id: str) -> list[str]:
        self._expire(user_id, self._clock())
        away = self._excluded.get(user_id, {})
        return [i for i, _ in sorted(away.items(), key=lambda kv: (kv[1], kv[0]))]

    async def ping(self) -> bool:
        return True

    def shared_redis(self) -> None:
        return None  # histories in process: what is kept beside them stays in process too

    async def close(self) -> None:
        return None
