"""Where the per-user cache entries live (app/serving/usercache.py says what they hold).

- Redis: one string `{prefix}v:{user}:{bundle}` per user and bundle, next to the history
  `{prefix}h:{user}` (on a Redis Cluster with the same `{user}` hash tag, in the history's slot),
  read together with the history by one script call and written with `SET .. EX ttl_s`.
- In process (memory store): a bounded LRU dict.
- Written after the answer is computed, batched across the requests of one event-loop turn (one
  pipeline): a write that fails (Redis down, timeout) is counted and forgotten, never fails the
  request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, NamedTuple, Protocol

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from app.stores.base import EventStore, SharedRedis, StoreUnavailable, excluded_of, items_of, timed_items

log = logging.getLogger("seqrec.userstate")
_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

# The history and the entry in one command: a pipeline of two costs redis-py about as much CPU
# again as the ZRANGE alone. pcall: an entry of the wrong type is a miss, never a failed read.
# ARGV = n, with_times (1: the members' scores too, flat), tag, k. With a tag (a bundle whose
# answers may be cached, see `state_check`), an entry whose check equals the history's state now
# and whose list holds at least k items answers alone: {0, its check and list, excluded}, the 200
# members unread. Only the entry's head and its list are read then (GETRANGE): the vector or
# state between them (an attention model's key/value cache is ~80 KB a user) stays in Redis.
# Otherwise {members, entry, card, excluded}. KEYS[3] is the user's exclusion set (negative
# feedback, app/stores/base.py), read in the same call: its items are never in the user's lists.
READ_LUA = """
local excluded = redis.call('ZRANGE', KEYS[3], 0, -1)
local n = tonumber(ARGV[1])
local card = redis.call('ZCARD', KEYS[1])
if ARGV[3] ~= '' and card > 0 then
  local first = redis.call('ZRANGE', KEYS[1], math.max(card - n, 0), math.max(card - n, 0))[1]
  local last = redis.call('ZRANGE', KEYS[1], -1, -1)[1]
  local check = ARGV[3] .. '\\0' .. card .. '\\0' .. first .. '\\0' .. last .. '\\0\\0'
  local head = redis.pcall('GETRANGE', KEYS[2], 0, #check + 11)
  if type(head) == 'string' and string.sub(head, 1, #check) == check then
    local stop = string.find(head, '\\0', #check + 1, true)
    local k = stop and tonumber(string.sub(head, #check + 1, stop - 1)) or 0
    if k > 0 and k >= tonumber(ARGV[4]) then
      return {0, string.sub(head, 1, stop) .. redis.call('GETRANGE', KEYS[2], -(4 + 8 * k), -1), excluded}
    end
  end
end
local entry = redis.pcall('GET', KEYS[2])
if type(entry) == 'table' then entry = false end
local h
if ARGV[2] == '1' then
  h = redis.call('ZRANGE', KEYS[1], -n, -1, 'WITHSCORES')
else
  h = redis.call('ZRANGE', KEYS[1], -n, -1)
end
return {h, entry, card, excluded}
"""
READ_SHA = hashlib.sha1(READ_LUA.encode()).hexdigest()


class EntryRead(NamedTuple):
    """What one read of history and entry returned: the history, or (history None) only an entry
    whose cached answer still holds."""

    history: list[str] | None  # the last n item ids; None when only the entry's list was read
    times: list[float] | None  # their times, when asked
    entry: bytes | None  # the stored entry, raw (with history None: its check and list, the base left out)
    check: bytes = b""  # the state of the history read (answer-cached bundles), see `state_check`
    excluded: tuple[str, ...] = ()  # the user's exclusion set: items never to list


def state_check(tag: bytes, card: int, first: bytes, last: bytes) -> bytes:
    """What identifies the history a read sees (the read script computes the same bytes): the bundle,
    the number of stored events, the first member of the read window and the newest member.

    Why that suffices: a write only adds members (ZADD NX), then trims the oldest to the limit; an
    added member that stays raises the count or, at the limit, pushes the window's first member out
    for good (first members only get newer), so any change to the window changes this check; an
    expired or deleted history has count 0 (never cached). Ids hold no NUL, so the fields are
    unambiguous, and the stored check ends with two NULs, which no check contains."""
    return tag + b"\0" + str(card).encode() + b"\0" + first + b"\0" + last + b"\0\0"


class CacheBackend(Protocol):
    async def read(
        self, user_id: str, n: int, field: str, with_times: bool = False, tag: bytes = b"", k: int = 0
    ) -> EntryRead:
        """The user's last n item ids (raises StoreUnavailable like `EventStore.history`), their
        times when `with_times`, and the entry; with a `tag`, possibly only an entry whose cached
        answer (at least k items) holds for the history as it is now, and else the check."""
        ...

    def put(self, user_id: str, field: str, blob: bytes) -> None:
        """Store the entry soon (never raises; a lost write is a later miss)."""
        ...

    async def drain(self) -> None: ...

    # Whether a read can check, next to the history, that a cached answer still holds (`tag`).
    checks_state: bool


class RedisBackend:
    """History and entry in one script call; the entry's failure alone is only a miss.

    Single Redis: the entry is `{prefix}v:{user}:{bundle}` next to `{prefix}h:{user}`. Redis
    Cluster: `{prefix}v:{{user}}:{bundle}`, in the history's slot, so the script's two keys are
    on one master.
    """

    checks_state = True

    def __init__(self, store: SharedRedis, ttl_s: int, errors: Counter) -> None:
        # Both Redis flavours offer the same seams (SharedRedis): nothing here depends on which.
        self.store = store
        self.ttl_s = ttl_s
        self.errors = errors
        self._pending: dict[str, tuple[str, bytes]] = {}  # entry key -> (user, blob); newest wins
        self._flushing: set[asyncio.Task[None]] = set()
        self._reads: list[tuple[tuple[str, ...], tuple[int, int, bytes, int], asyncio.Future[list[Any]]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # the batches of reads in flight

    def key(self, user_id: str, field: str) -> str:
        return self.store.entry_key(user_id, field)

    async def _client(self, user_id: str) -> Redis:
        return await self.store.user_client(user_id)

    async def _write_client(self, user_id: str) -> Redis:
        return await self._client(user_id)  # one seam: tests point the writes at a refusing Redis

    async def read(
        self, user_id: str, n: int, field: str, with_times: bool = False, tag: bytes = b"", k: int = 0
    ) -> EntryRead:
        keys = (self.store.key(user_id), self.key(user_id, field), self.store.excluded_key(user_id))
        args = (n, 1 if with_times else 0, tag, k)
        try:
            async with asyncio.timeout(self.store.read_timeout):
                if self.store.shares_connection:
                    reply = await self._batched(keys, args)
                else:  # one master per user: no shared batch
                    reply = await self._script(await self._client(user_id), keys, args)
        except _ERRORS as exc:
            self.store.connection_failed()  # as the store's own read does (a cluster reloads its map)
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if not isinstance(reply[0], list):  # {0, entry, excluded}: the cached answer holds
            return EntryRead(None, None, reply[1], excluded=tuple(excluded_of(reply[2])))
        members, blob, card, away = reply
        entry = blob if isinstance(blob, bytes) else None
        raw = members[0::2] if with_times else members
        check = state_check(tag, int(card), raw[0], raw[-1]) if tag and raw else b""
        excluded = tuple(excluded_of(away))
        if with_times:  # a flat member, score, member, score, ... list from the script
            return EntryRead(*timed_items(raw, members[1::2]), entry, check, excluded)
        return EntryRead(items_of(raw), None, entry, check, excluded)

    @staticmethod
    async def _script(client: Redis, keys: tuple[str, ...], args: tuple[int, int, bytes, int]) -> list[Any]:
        try:
            got: list[Any] = await client.evalsha(READ_SHA, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or new Redis: EVAL also caches the script
            got = await client.eval(READ_LUA, len(keys), *keys, *args)
        return got

    def _batched(self, keys: tuple[str, ...], args: tuple[int, int, bytes, int]) -> asyncio.Future[list[Any]]:
        """This read, sent with every other read issued in the same event-loop turn as one pipeline.

        Under load several requests reach this point per turn; one round trip instead of one each
        is most of the Redis client's CPU (a socket write and a wake-up of Redis per command). The
        read is still issued after its request arrived, so it sees every acknowledged write."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._reads.append((keys, args, fut))
        if len(self._reads) == 1:  # the first read of this turn sends the batch on the next one
            task = loop.create_task(self._send_reads())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return fut

    async def _send_reads(self) -> None:
        batch, self._reads = self._reads, []
        client = await self._client("")  # batching only where every user's keys share one server
        try:
            async with asyncio.timeout(self.store.read_timeout):
                if len(batch) == 1:
                    keys, args, fut = batch[0]
                    results: list[Any] = [await self._script(client, keys, args)]
                else:
                    pipe = client.pipeline(transaction=False)
                    for keys, args, _ in batch:
                        pipe.evalsha(READ_SHA, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
                    for i, got in enumerate(results):
                        if isinstance(got, NoScriptError):  # Redis restarted: load the script, once
                            keys, args, _ = batch[i]
                            results[i] = await self._script(client, keys, args)
        except BaseException as exc:  # every waiting read fails as its own read would
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable("read cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), got in zip(batch, results, strict=True):
            if fut.done():  # its request gave up (timeout) meanwhile
                continue
            if isinstance(got, Exception):
                fut.set_exception(got)
            else:
                fut.set_result(got)

    def put(self, user_id: str, field: str, blob: bytes) -> None:
        first = not self._pending
        self._pending[self.key(user_id, field)] = (user_id, blob)
        if first:  # one flush per event-loop turn carries every entry computed in it
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other requests of this turn add theirs
        pending, self._pending = self._pending, {}
        groups: dict[int, tuple[Redis, list[tuple[str, bytes]]]] = {}
        try:
            for key, (user, blob) in pending.items():
                client = await self._write_client(user)
                groups.setdefault(id(client), (client, []))[1].append((key, blob))
            for client, entries in groups.values():
                pipe = client.pipeline(transaction=False)
                for key, blob in entries:
                    pipe.set(key, blob, ex=self.ttl_s)
                async with asyncio.timeout(self.store.read_timeout):
                    await pipe.execute(raise_on_error=True)
        except _ERRORS as exc:  # the answers are already computed: a lost entry is just a later miss
            self.errors.inc(len(pending))
            log.debug("user state write failed: %r", exc)

    async def drain(self) -> None:
        while self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)


class MemoryBackend:
    """In process, next to the MemoryStore: bounded (LRU, by count and by bytes) and expiring like the
    Redis entries. The byte bound matters for key/value caches: 100,000 users at ~80 KB would be 8 GB."""

    checks_state = False

    def __init__(self, store: EventStore, ttl_s: float, max_entries: int = 100_000, max_bytes: int = 512 << 20) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0  # of the blobs held
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()

    async def read(
        self, user_id: str, n: int, field: str, with_times: bool = False, tag: bytes = b"", k: int = 0
    ) -> EntryRead:
        """Always the history (in process, reading it is cheap): answers are not cached here."""
        got = await self.store.read(user_id, n, with_times)
        hit = self._entries.get((user_id, field))
        if hit is None or time.monotonic() - hit[0] >= self.ttl_s:
            return EntryRead(got.items, got.times, None, excluded=tuple(got.excluded))
        return EntryRead(got.items, got.times, hit[1], excluded=tuple(got.excluded))

    def put(self, user_id: str, field: str, blob: bytes) -> None:
        key = (user_id, field)
        old = self._entries.get(key)
        self.nbytes += len(blob) - (len(old[1]) if old is not None else 0)
        self._entries[key] = (time.monotonic(), blob)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries or (self.nbytes > self.max_bytes and len(self._entries) > 1):
            self.nbytes -= len(self._entries.popitem(last=False)[1][1])

    async def drain(self) -> None:
        return None


def cache_backend(store: EventStore, ttl_s: int, errors: Counter) -> CacheBackend:
    """The entries' home for `store`: Redis next to the histories, else in process."""
    shared = store.shared_redis()
    if shared is not None:
        return RedisBackend(shared, ttl_s, errors)
    return MemoryBackend(store, ttl_s)
