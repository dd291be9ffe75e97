"""In-process store: the embedded default when no Redis URL is set.

Single process only (each uvicorn worker would hold its own copy) and not durable (a
restart forgets every history). Meant for the demo and for tests, not production.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from app.stores.base import AppendResult, Event, items_of, member


class MemoryStore:
    kind = "memory"

    def __init__(self, max_history: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_history = max_history
        self.ttl_s = ttl_s
        self._clock = clock
        self._hist: dict[str, list[tuple[float, str]]] = {}  # sorted by (timestamp, member) like a Redis zset
        self._members: dict[str, set[str]] = {}
        self._touched: dict[str, float] = {}
        self._writes = 0

    def _expire(self, user: str, now: float) -> None:
        t = self._touched.get(user)
        if t is not None and now - t >= self.ttl_s:
            self._hist.pop(user, None)
            self._members.pop(user, None)
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
            hist = self._hist.setdefault(user, [])
            seen = self._members.setdefault(user, set())
            fresh: list[str] = []
            for ev in evs:
                m = member(ev)
                if m in seen:
                    continue  # stored before, or an earlier copy in this batch
                seen.add(m)
                bisect.insort(hist, (ev.timestamp, m))
                fresh.append(m)
            if len(hist) > self.max_history:
                for _, m in hist[: len(hist) - self.max_history]:
                    seen.discard(m)
                del hist[: len(hist) - self.max_history]
            kept = sum(1 for m in fresh if m in seen)  # what survived the trim, like the Redis script
            added += kept
            too_old += len(fresh) - kept
            self._touched[user] = now
        self._writes += 1
        if self._writes % 1000 == 0:
            self._sweep(now)
        return AppendResult(accepted=added, duplicates=len(events) - added - too_old, too_old=too_old)

    def _tail(self, user_id: str, n: int | None) -> list[Any]:
        """The last n (time, member) pairs of the user's history."""
        self._expire(user_id, self._clock())
        hist = self._hist.get(user_id, [])
        return hist if n is None else hist[-n:]

    async def history(self, user_id: str, n: int | None = None) -> list[str]:
        return items_of([m for _, m in self._tail(user_id, n)])

    async def history_times(self, user_id: str, n: int | None = None) -> tuple[list[str], list[float]]:
        tail = self._tail(user_id, n)
        return items_of([m for _, m in tail]), [float(t) for t, _ in tail]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
