"""Redis store: one sorted set per user, score = event time, member = event id + item id.

Why a sorted set: ZADD NX gives idempotent replays (same member -> no-op, score kept) and
late events land at their time position for free; ZREMRANGEBYRANK keeps the last N.
A batch is written in one pipeline (one round trip): per user ZADD NX, trim, EXPIRE.
Timeouts are short and retries off, so a down Redis costs milliseconds, not seconds: a
refused connection fails at once, a hung one after `timeout_s` (reads) / `write_timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.stores.base import AppendResult, Event, StoreUnavailable, items_of, member

_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        max_history: int,
        ttl_s: int,
        prefix: str = "seqrec:",
        timeout_s: float = 0.25,
        pool_size: int = 64,
        write_timeout_s: float = 2.0,
    ) -> None:
        self.max_history = max_history
        self.ttl_s = ttl_s
        self.prefix = prefix
        opts = {
            "max_connections": pool_size,
            "socket_timeout": max(timeout_s, write_timeout_s),  # the socket bound is the write timeout ...
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        self.pool = ConnectionPool.from_url(url, decode_responses=True, **opts)
        self.redis = Redis(connection_pool=self.pool)
        # History reads (the hot path) take raw bytes: redis-py decodes replies member by member in
        # Python, which costs as much as the whole round trip for a 200-event history.
        self.raw_pool = ConnectionPool.from_url(url, decode_responses=False, **opts)
        self.raw = Redis(connection_pool=self.raw_pool)
        self.read_timeout_s = timeout_s  # ... reads are cut shorter, a recommendation must stay fast

    def key(self, user_id: str) -> str:
        return f"{self.prefix}h:{user_id}"

    async def append(self, events: list[Event]) -> AppendResult:
        by_user: dict[str, dict[str, float]] = defaultdict(dict)
        for ev in events:
            by_user[ev.user_id].setdefault(member(ev), ev.timestamp)  # first copy in a batch wins, like NX
        pipe = self.redis.pipeline(transaction=False)
        for user, mapping in by_user.items():
            key = self.key(user)
            pipe.zadd(key, mapping, nx=True)
            pipe.zremrangebyrank(key, 0, -(self.max_history + 1))
            pipe.expire(key, self.ttl_s)
        try:
            res = await pipe.execute(raise_on_error=True)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        added = sum(int(x) for x in res[0::3])
        return AppendResult(accepted=added, duplicates=len(events) - added)

    async def history(self, user_id: str, n: int | None = None) -> list[str]:
        n = self.max_history if n is None else n
        try:
            async with asyncio.timeout(self.read_timeout_s):
                members = await self.raw.zrange(self.key(user_id), -n, -1)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return items_of(members)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return bool(await self.redis.ping())
        except _ERRORS:
            return False

    async def close(self) -> None:
        await self.redis.aclose()
        await self.raw.aclose()
        await self.pool.aclose()
        await self.raw_pool.aclose()
