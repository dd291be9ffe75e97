"""Redis store: one sorted set per user, score = event time, member = event id + item id.

Why a sorted set: ZADD NX gives idempotent replays (same member -> no-op, score kept) and
late events land at their time position for free; ZREMRANGEBYRANK keeps the last N.
A batch is written in one pipeline (one round trip) of one script call per user: ZADD NX
member by member, trim (noting which members it removed), EXPIRE, the items of excluding events
(negative feedback, SEQREC_EXCLUDE_TYPES) into the user's exclusion set `{prefix}x:{user}` (same
TTL), and, with the event log on, XADD of every event new to the window and the log
(app/stores/eventlog.py). A script runs
atomically, so the counts (accepted / duplicates / too_old) say exactly what that write did even
with concurrent writers to the same user, and an event is in the window's write and the log's or
in neither.
Timeouts are short and retries off, so a down Redis costs milliseconds, not seconds: a
refused connection fails at once, a hung one after `timeout` (reads) / `write_timeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.stores.base import (
    AppendResult,
    Event,
    LoggedEvent,
    StoreUnavailable,
    UserRead,
    excluded_of,
    items_of,
    member,
    timed_items,
    timed_items_of,
    types_of,
)
from app.stores.eventlog import INDEX, STREAM, EventLog, default_log, read_stream

_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# KEYS[1] = history, KEYS[2] = the user's exclusion set; ARGV = max_history, ttl_s, then the events
# as one string: score RS member records separated by GS (ids hold no control characters). One
# argument instead of two per event: redis-py packs each argument in Python, and that was a fifth of
# an ingest batch's CPU. ARGV[4] = max_excluded, ARGV[5] = the items to exclude, as score RS item
# records (empty: none). With the event log (app/stores/eventlog.py) also KEYS[3] = the log stream,
# KEYS[4], KEYS[5] = the user's index of logged events (this retention period's, the previous
# one's), and ARGV[6] = user id, ARGV[7] = the log's MINID (ms), ARGV[8] = when KEYS[4] expires.
# Returns {accepted, duplicates, too_old}.
APPEND_LUA = """
local key = KEYS[1]
local added, times = {}, {}
local dup = 0
for score, m in string.gmatch(ARGV[3], '([^\\29\\30]+)\\30([^\\29]+)') do
  if redis.call('ZADD', key, 'NX', score, m) == 1 then
    added[#added + 1] = m
    times[#added] = score
  else
    dup = dup + 1
  end
end
local trimmed, gone = {}, {}
local size = redis.call('ZCARD', key)
local over = size - tonumber(ARGV[1])
if over > 0 then
  trimmed = redis.call('ZRANGE', key, 0, over - 1)
  redis.call('ZREMRANGEBYRANK', key, 0, over - 1)
  for _, m in ipairs(trimmed) do gone[m] = true end
end
redis.call('EXPIRE', key, ARGV[2])
local kept = 0
for _, m in ipairs(added) do
  if not gone[m] then kept = kept + 1 end
end
-- The exclusion set: every excluding event's item, stored or not (a duplicate, one too old), newest
-- time kept; trimmed to the last max_excluded; it lives as long as the window.
if ARGV[5] ~= '' then
  for score, item in string.gmatch(ARGV[5], '([^\\29\\30]+)\\30([^\\29]+)') do
    redis.call('ZADD', KEYS[2], 'GT', score, item)
  end
  local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
if #KEYS == 5 then  -- the event log
  local fresh = size == #added  -- the window was empty (new, or expired) before this write
  local index
  local function logged_before(d)
    if index == nil then
      index = (redis.call('GET', KEYS[4]) or '') .. (redis.call('GET', KEYS[5]) or '')
    end
    local at = 1
    while true do
      local s = string.find(index, d, at, true)
      if s == nil then return false end
      if s % 12 == 1 then return true end  -- at a digest's start, not across two
      at = s + 1
    end
  end
  -- New to the window is new to the log, unless the window no longer holds what it would have
  -- recognised (the event is older than all kept, or the window had expired): then ask the index.
  local digests = {}
  for j, m in ipairs(added) do
    local d = string.sub(redis.sha1hex(m), 1, 12)
    if not ((gone[m] or fresh) and logged_before(d)) then
      -- A typed member (event id, FS or ESC, type, US, item) is logged as `m` = event id US item
      -- and `y` = the type, so entries of the default type stay exactly as they were.
      local mark = string.find(m, '[\\27\\28]')
      if mark == nil then
        redis.call('XADD', KEYS[3], 'MINID', '~', ARGV[7], '*', 'u', ARGV[6], 'm', m, 't', times[j])
      else
        local us = string.find(m, '\\31', mark, true)
        local plain = string.sub(m, 1, mark - 1) .. string.sub(m, us)
        local y = string.sub(m, mark + 1, us - 1)
        redis.call('XADD', KEYS[3], 'MINID', '~', ARGV[7], '*', 'u', ARGV[6], 'm', plain, 't', times[j], 'y', y)
      end
      digests[#digests + 1] = d
    end
  end
  if #digests > 0 then
    local joined = table.concat(digests)
    if redis.call('APPEND', KEYS[4], joined) == #joined then  -- a new period's index
      redis.call('EXPIREAT', KEYS[4], ARGV[8])
    end
  end
end
return {kept, dup, #added - kept}
"""
RECORD, FIELD = "\x1d", "\x1e"  # \29 and \30 in the script


def append_args(
    max_history: int,
    ttl_s: int,
    mapping: dict[str, float],
    excluded: dict[str, float] | None = None,
    max_excluded: int = 1000,
) -> list[str | int]:
    """The script's ARGV for one user's distinct members and their event times, and the items to
    exclude (item -> event time)."""
    records = RECORD.join(f"{float(ts)!r}{FIELD}{m}" for m, ts in mapping.items())
    away = RECORD.join(f"{float(ts)!r}{FIELD}{i}" for i, ts in (excluded or {}).items())
    return [max_history, ttl_s, records, max_excluded, away]


def append_call(
    history: str,
    excluded: str,
    args: list[str | int],
    log: EventLog | None,
    stream: str,
    index: str,
    user: str,
    now: float,
) -> tuple[list[str], list[str | int]]:
    """The script's KEYS and ARGV for one user's batch: the history, the exclusion set, and with the
    log also its stream, the user's index keys `index:<period>` and the log's arguments."""
    if log is None:
        return [history, excluded], args
    this, before, expire_at = log.index_keys(index, now)
    return [history, excluded, stream, this, before], [*args, user, log.min_id(now), expire_at]


def user_batches(events: list[Event]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per user: distinct members -> event time (the first copy in a batch wins, like NX), and the
    items its excluding events name -> the newest such event's time."""
    members: dict[str, dict[str, float]] = defaultdict(dict)
    away: dict[str, dict[str, float]] = defaultdict(dict)
    for ev in events:
        members[ev.user_id].setdefault(member(ev), ev.timestamp)
        if ev.excluding:
            got = away[ev.user_id]
            got[ev.item_id] = max(ev.timestamp, got.get(ev.item_id, ev.timestamp))
    return members, away


async def read_user(client: Redis, keys: list[str], n: int, with_times: bool, with_types: bool) -> UserRead:
    """The window's last n members (with scores) and the exclusion set, in one pipeline on `client`.

    A pipeline, not a script returning both: the same client CPU, and a script's reply of 200
    members cost Redis ~20 us more per read (benchmarks/serving/event_types_cost.py)."""
    pipe = client.pipeline(transaction=False)
    pipe.zrange(keys[0], -n, -1, withscores=with_times)
    pipe.zrange(keys[1], 0, -1)
    window, away = await pipe.execute()
    members = [m for m, _ in window] if with_times else window
    types = types_of(members) if with_types else None
    if not with_times:
        return UserRead(items_of(members), None, excluded_of(away), types)
    items, times = timed_items(members, [t for _, t in window])
    return UserRead(items, times, excluded_of(away), types)


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        max_history: int,
        ttl_s: int,
        prefix: str = "seqrec:",
        read_timeout: float = 0.25,
        pool_size: int = 64,
        write_timeout: float = 2.0,
        event_log: EventLog | None = default_log(),  # frozen: one shared default is safe
        max_excluded: int = 1000,
    ) -> None:
        self.max_history = max_history
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.event_log = event_log  # None: the window only (SEQREC_EVENT_LOG=false)
        self.max_excluded = max_excluded
        self.log_key = f"{prefix}{STREAM}"
        opts = {
            "max_connections": pool_size,
            "socket_timeout": max(read_timeout, write_timeout),  # the socket bound is the write timeout ...
            "socket_connect_timeout": read_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        self.pool = ConnectionPool.from_url(url, decode_responses=True, **opts)
        self.redis = Redis(connection_pool=self.pool)
        # History reads (the hot path) take raw bytes: redis-py decodes replies member by member in
        # Python, which costs as much as the whole round trip for a 200-event history.
        self.raw_pool = ConnectionPool.from_url(url, decode_responses=False, **opts)
        self.raw = Redis(connection_pool=self.raw_pool)
        self.read_timeout = read_timeout  # ... reads are cut shorter, a recommendation must stay fast

    def key(self, user_id: str) -> str:
        return f"{self.prefix}h:{user_id}"

    def excluded_key(self, user_id: str) -> str:
        """The user's exclusion set: a sorted set of item ids, score = the excluding event's time."""
        return f"{self.prefix}x:{user_id}"

    # The seams the per-user cache (app/stores/usercache.py) uses, shared with ClusterStore.
    shares_connection = True  # every user's keys on one server: reads of many users batch into one pipeline

    def shared_redis(self) -> RedisStore:
        return self

    def user_key(self, kind: str, user_id: str) -> str:
        return f"{self.prefix}{kind}:{user_id}"

    def entry_key(self, user_id: str, field: str) -> str:
        """A per-user entry next to the history (the user cache's `v:` keys)."""
        return f"{self.prefix}v:{user_id}:{field}"

    async def user_client(self, user_id: str) -> Redis:
        """The raw-bytes client of the server that holds this user's keys."""
        return self.raw

    def connection_failed(self) -> None:
        """A command to this user's server failed (nothing to refresh on a single server)."""

    async def append(self, events: list[Event]) -> AppendResult:
        by_user, away = user_batches(events)
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for user, mapping in by_user.items():
            args = append_args(self.max_history, self.ttl_s, mapping, away.get(user), self.max_excluded)
            index = f"{self.prefix}{INDEX}:{user}"
            keys, argv = append_call(
                self.key(user), self.excluded_key(user), args, self.event_log, self.log_key, index, user, now
            )
            # EVAL, not EVALSHA: no SCRIPT EXISTS round trip per batch and nothing to reload after a
            # Redis restart; Redis caches the compiled script by its digest anyway.
            pipe.eval(APPEND_LUA, len(keys), *keys, *argv)
        try:
            res = await pipe.execute(raise_on_error=True)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        accepted = sum(int(r[0]) for r in res)
        too_old = sum(int(r[2]) for r in res)
        # Copies repeated inside the batch never reach the script: they are duplicates too.
        return AppendResult(accepted=accepted, duplicates=len(events) - accepted - too_old, too_old=too_old)

    async def _tail(self, user_id: str, n: int | None, withscores: bool) -> list[Any]:
        """The last n members of the user's history (with their scores)."""
        n = self.max_history if n is None else n
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self.raw.zrange(self.key(user_id), -n, -1, withscores=withscores)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def history(self, user_id: str, n: int | None = None) -> list[str]:
        return items_of(await self._tail(user_id, n, withscores=False))

    async def history_times(self, user_id: str, n: int | None = None) -> tuple[list[str], list[float]]:
        return timed_items_of(await self._tail(user_id, n, withscores=True))

    async def read(
        self, user_id: str, n: int | None = None, with_times: bool = False, with_types: bool = False
    ) -> UserRead:
        """History and exclusion set in one round trip (both keys are on this server)."""
        n = self.max_history if n is None else n
        keys = [self.key(user_id), self.excluded_key(user_id)]
        try:
            async with asyncio.timeout(self.read_timeout):
                return await read_user(self.raw, keys, n, with_times, with_types)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def excluded(self, user_id: str) -> list[str]:
        try:
            async with asyncio.timeout(self.read_timeout):
                return excluded_of(await self.raw.zrange(self.excluded_key(user_id), 0, -1))
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def log_entries(self) -> AsyncIterator[LoggedEvent]:
        """Every event of the log, in the order it was logged (`seqrec snapshot` is the exporter)."""
        try:
            async for entry in read_stream(self.raw, self.log_key):
                yield entry
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.read_timeout):
                return bool(await self.redis.ping())
        except _ERRORS:
            return False

    async def close(self) -> None:
        await self.redis.aclose()
        await self.raw.aclose()
        await self.pool.aclose()
        await self.raw_pool.aclose()
