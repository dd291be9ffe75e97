"""Where online evaluation keeps served lists and per-minute counters: Redis (shared by every
process, next to the histories) or this process (the in-process store). What is scored, and how:
app/serving/online.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.stores.base import EventStore
from app.stores.cluster import ClusterStore
from app.stores.redis import RedisStore

log = logging.getLogger("seqrec.app")

MINUTE = 60
COUNTER_TTL_S = 25 * 3600  # a day of minute buckets is kept, plus slack


@dataclass(frozen=True, slots=True)
class Served:
    bundle: str
    variant: str
    items: tuple[str, ...]
    at: float = 0.0  # when it was served (the serving process's wall clock)


class Ledger(Protocol):
    """Where served lists and per-minute counters live (Redis or this process)."""

    shared: bool  # other processes write to it too (their lists can land after an event is seen here)

    async def remember(self, batch: Sequence[tuple[str, Served]]) -> None:
        """Keep each user's served list (per bundle) for the TTL."""
        ...

    async def take(
        self, users: Sequence[str], bundles: Sequence[str], before: Sequence[float] | None = None
    ) -> dict[str, list[Served]]:
        """The lists these bundles served these users, forgotten in the same step (scored once).
        With `before` (one time per user), only lists served at or before the user's time are
        taken; a later one stays for the user's next event."""
        ...

    async def add(self, counts: Counts, items: Items) -> None:
        """Add per-minute counters and served item ids (coverage) from this process."""
        ...

    async def window(self, minutes: Sequence[int]) -> tuple[dict[str, float], dict[str, int]]:
        """Summed counters, and distinct items served per `bundle|variant`, over these minutes."""
        ...


Counts = dict[int, dict[str, float]]  # minute -> counter name -> value
Items = dict[tuple[int, str], set[str]]  # (minute, "bundle|variant") -> item ids served


class MemoryLedger:
    """In-process ledger for the in-process store: bounded, expiring, single process."""

    shared = False

    def __init__(self, ttl_s: float, max_users: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_users, self._clock = ttl_s, max_users, clock
        self._lists: OrderedDict[str, dict[str, tuple[float, Served]]] = OrderedDict()
        self._counts: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._items: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._swept = 0  # the minute old buckets were last dropped at

    async def remember(self, batch: Sequence[tuple[str, Served]]) -> None:
        now = self._clock()
        for user, entry in batch:
            lists = self._lists.pop(user, {})
            lists[entry.bundle] = (now, entry)
            self._lists[user] = lists  # most recent last
        while len(self._lists) > self.max_users:
            self._lists.popitem(last=False)

    async def take(
        self, users: Sequence[str], bundles: Sequence[str], before: Sequence[float] | None = None
    ) -> dict[str, list[Served]]:
        now, out = self._clock(), {}
        for n, u in enumerate(users):
            lists = self._lists.pop(u, None)
            if not lists:
                continue
            if before is not None:  # lists served after the user's time stay
                later = {b: ts for b, ts in lists.items() if ts[1].at > before[n]}
                if later:
                    self._lists[u] = later
                lists = {b: ts for b, ts in lists.items() if b not in later}
            out[u] = [s for t, s in lists.values() if now - t < self.ttl_s]
        return out

    async def add(self, counts: Counts, items: Items) -> None:
        for minute, c in counts.items():
            bucket = self._counts[minute]
            for k, v in c.items():
                bucket[k] += v
        for (minute, group), ids in items.items():
            self._items[minute][group] |= ids
        newest = max([*counts, *(m for m, _ in items)], default=self._swept)
        if newest != self._swept:  # drop buckets older than a day, once a minute
            self._swept = newest
            for old in [m for m in self._counts if m < newest - COUNTER_TTL_S // MINUTE]:
                self._counts.pop(old, None)
                self._items.pop(old, None)

    async def window(self, minutes: Sequence[int]) -> tuple[dict[str, float], dict[str, int]]:
        total: dict[str, float] = defaultdict(float)
        items: dict[str, set[str]] = defaultdict(set)
        for m in minutes:
            for k, v in self._counts.get(m, {}).items():
                total[k] += v
            for k, s in self._items.get(m, {}).items():
                items[k] |= s
        return dict(total), {k: len(s) for k, s in items.items()}


# GETDEL, but only for a list served at or before ARGV[1] (the value is [variant, items, at]):
# a list served after the event it is compared with stays for the user's next event.
TAKE_IF_BEFORE = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local at = cjson.decode(v)[3]
if at and tonumber(at) > tonumber(ARGV[1]) then return false end
redis.call('DEL', KEYS[1])
return v
"""


class RedisLedger:
    """Redis ledger: shared by every process. A served list is one string key per user and
    bundle, written with SET ... EX (one plain command: the whole per-answer cost) and taken
    with GETDEL (atomic, so two workers never score the same list twice; one key per command,
    so a Redis Cluster serves it too)."""

    shared = True

    def __init__(
        self,
        redis: Any,
        prefix: str,
        ttl_s: int,
        timeout: float,
        lists_key: Callable[[str], str] | None = None,
    ) -> None:
        self.redis, self.prefix, self.ttl_s, self.timeout = redis, prefix, ttl_s, timeout
        self._user = lists_key or (lambda user: f"{prefix}s:{user}")

    def _list(self, user: str, bundle: str) -> str:
        return f"{self._user(user)}:{bundle}"

    def _counts(self, minute: int) -> str:
        return f"{self.prefix}o:{minute}"

    def _hll(self, minute: int, group: str) -> str:
        tag = group.replace("{", "(").replace("}", ")")
        return f"{self.prefix}o:c:{{{tag}}}:{minute}"

    @staticmethod
    def _value(e: Served) -> str:
        return json.dumps([e.variant, list(e.items), e.at], separators=(",", ":"))  # full precision: compared

    async def remember(self, batch: Sequence[tuple[str, Served]]) -> None:
        async with asyncio.timeout(self.timeout):
            if len(batch) == 1:  # the common case when not loaded: no pipeline object to build
                user, e = batch[0]
                await self.redis.set(self._list(user, e.bundle), self._value(e), ex=self.ttl_s)
                return
            pipe = self.redis.pipeline(transaction=False)
            for user, e in batch:
                pipe.set(self._list(user, e.bundle), self._value(e), ex=self.ttl_s)
            await pipe.execute()

    async def take(
        self, users: Sequence[str], bundles: Sequence[str], before: Sequence[float] | None = None
    ) -> dict[str, list[Served]]:
        pairs = [(u, n, b) for n, u in enumerate(users) for b in bundles]
        if not pairs:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for u, n, b in pairs:
            if before is None:
                pipe.getdel(self._list(u, b))
            else:
                pipe.eval(TAKE_IF_BEFORE, 1, self._list(u, b), repr(before[n]))
        async with asyncio.timeout(self.timeout):
            res = await pipe.execute()
        out: dict[str, list[Served]] = {}
        for (u, _, b), raw in zip(pairs, res, strict=True):
            if raw:
                variant, items, *at = json.loads(raw)
                out.setdefault(u, []).append(Served(b, variant, tuple(items), at[0] if at else 0.0))
        return out

    async def add(self, counts: Counts, items: Items) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for minute, c in counts.items():
            key = self._counts(minute)
            for k, v in c.items():
                pipe.hincrbyfloat(key, k, v)
            pipe.expire(key, COUNTER_TTL_S)
        for (minute, group), ids in items.items():
            if ids:
                hll = self._hll(minute, group)
                pipe.pfadd(hll, *ids)
                pipe.expire(hll, COUNTER_TTL_S)
        async with asyncio.timeout(self.timeout):
            await pipe.execute()

    async def window(self, minutes: Sequence[int]) -> tuple[dict[str, float], dict[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(self._counts(m))
        async with asyncio.timeout(self.timeout):
            buckets = await pipe.execute()
        total: dict[str, float] = defaultdict(float)
        for b in buckets:
            for k, v in b.items():
                total[k] += float(v)
        groups = sorted({k.rsplit("|", 1)[0] for k in total if k.endswith("|served")})
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.pfcount(*[self._hll(m, g) for m in minutes])  # union over the window
        async with asyncio.timeout(self.timeout):
            distinct = await pipe.execute() if groups else []
        return dict(total), dict(zip(groups, (int(d) for d in distinct), strict=True))


def online_ledger(store: EventStore, prefix: str, ttl_s: int, timeout: float) -> Ledger:
    """The ledger next to `store`: in its Redis (on a cluster, each user's lists in the user's
    slot), else in process."""
    if isinstance(store, ClusterStore):
        return RedisLedger(store.redis, prefix, ttl_s, timeout, lambda u: store.user_key("s", u))
    if isinstance(store, RedisStore):
        return RedisLedger(store.redis, prefix, ttl_s, timeout)
    if store.kind != "memory":
        log.warning("online tracking kept in process: the %s store offers no shared client", store.kind)
    return MemoryLedger(ttl_s)
