"""The shop's catalogue state: item attributes and availability, shared by every API process.

A record is one item's attributes as canonical JSON (`{"available": true, "price": 12.5, ...}`),
replaced whole by every write. Records need not name items a bundle knows, and bundles come and
go without touching them. Every write is a batch, stored atomically with a new **version**:

Redis layout (one hash tag, `{catalog}`, so that every key lives in one slot of a Redis Cluster
and a batch is one script there too; `seqrec catalog import` writes the same layout):
  {prefix}{catalog}:version  integer: the version of the last batch
  {prefix}{catalog}:items    hash: item id -> record JSON
  {prefix}{catalog}:changed  sorted set: item id -> version of its last change (deletions included)
  {prefix}{catalog}:schema   hash: attribute -> kind (string, number, boolean, list), fixed by first use
A process holding version v catches up with ZRANGEBYSCORE changed (v, v + window] and the records
of those ids, read in one script (a consistent snapshot); it polls the version a few times a
second (app/serving/catalog.py). Writes go through the event store's connection (same Redis, same
`appendfsync`); on a Redis Cluster a write also waits for SEQREC_REDIS_WAIT_REPLICAS replicas
like an event batch. In process (no Redis) the one process is the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from app.stores.base import StoreUnavailable

_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
TAG = "{catalog}"
Change = tuple[str, int, str | None]  # item id, version of its last change, record JSON (None: deleted)
NO_CHECK = "*"  # `expect` of a write that replaces whatever is stored

# KEYS: version, items, changed, schema. ARGV[1]: the record the (single) item must hold now ("" =
# none), or "*" for no check; ARGV[2]: n new kinds; then n (attribute, kind) pairs; then (id, record)
# pairs, record "" = delete. Returns {"ok", version}, {"conflict", attribute, kind held} or {"changed"}.
WRITE_LUA = """
local expect = ARGV[1]
local nk = tonumber(ARGV[2])
local first = 3 + 2 * nk
if expect ~= '*' then
  local cur = redis.call('HGET', KEYS[2], ARGV[first]) or ''
  if cur ~= expect then return {'changed'} end
end
for i = 0, nk - 1 do
  local have = redis.call('HGET', KEYS[4], ARGV[3 + 2 * i])
  if have and have ~= ARGV[4 + 2 * i] then return {'conflict', ARGV[3 + 2 * i], have} end
end
for i = 0, nk - 1 do
  redis.call('HSET', KEYS[4], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
local v = redis.call('INCR', KEYS[1])
for j = first, #ARGV, 2 do
  if ARGV[j + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[j])
  else
    redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 1])
  end
  redis.call('ZADD', KEYS[3], v, ARGV[j])
end
return {'ok', v}
"""

# KEYS: version, items, changed, schema; ARGV: since, upto. Returns {version now, schema pairs,
# id, its version, record ("" = deleted), ...} for the items changed in versions (since, upto].
CHANGES_LUA = """
local out = {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HGETALL', KEYS[4])}
local got = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], ARGV[2], 'WITHSCORES')
for s = 1, #got, 2000 do
  local ids = {}
  for i = s, math.min(s + 1999, #got), 2 do ids[#ids + 1] = got[i] end
  local recs = redis.call('HMGET', KEYS[2], unpack(ids))
  for i = 1, #ids do
    out[#out + 1] = ids[i]
    out[#out + 1] = got[s + 2 * (i - 1) + 1]
    out[#out + 1] = recs[i] or ''
  end
end
return out
"""


def keys(prefix: str) -> list[str]:
    """version, items, changed, schema: the scripts' KEYS."""
    return [f"{prefix}{TAG}:{name}" for name in ("version", "items", "changed", "schema")]


def write_args(records: dict[str, str | None], kinds: dict[str, str], expect: str | None) -> list[str]:
    """WRITE_LUA's ARGV. `expect`: None = no check, "" = the item must be absent, else its record."""
    args = [NO_CHECK if expect is None else expect, str(len(kinds))]
    for attr, kind in kinds.items():
        args += [attr, kind]
    for item, rec in records.items():
        args += [item, rec or ""]
    return args


class SchemaConflict(Exception):
    """An attribute of the batch already has another kind in the catalogue (nothing was written)."""

    def __init__(self, attr: str, held: str) -> None:
        self.attr, self.held = attr, held
        super().__init__(f"{attr} is a {held} in the catalogue")


class RecordChanged(Exception):
    """The item's record changed since it was read (a merge is retried on the new one)."""


class CatalogStore(Protocol):
    kind: str

    async def write(self, records: dict[str, str | None], kinds: dict[str, str], expect: str | None = None) -> int:
        """Store records (None: delete) and new attribute kinds atomically; the batch's version.
        SchemaConflict / RecordChanged (nothing written), StoreUnavailable."""
        ...

    async def get(self, item_id: str) -> str | None: ...

    async def version(self) -> int: ...

    async def changes(self, since: int, upto: int) -> tuple[int, dict[str, str], list[Change]]:
        """(version now, schema, the items changed in versions (since, upto]), read atomically."""
        ...

    def scan(self, count: int = 5000) -> AsyncIterator[list[tuple[str, str]]]:
        """Every record, in chunks (not atomic: follow with `changes` from the version read before)."""
        ...

    async def close(self) -> None: ...


class MemoryCatalog:
    """In process: the one process is the whole fleet."""

    kind = "memory"

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._changed: dict[str, int] = {}
        self._schema: dict[str, str] = {}
        self._version = 0

    async def write(self, records: dict[str, str | None], kinds: dict[str, str], expect: str | None = None) -> int:
        if expect is not None and self._records.get(next(iter(records)), "") != expect:
            raise RecordChanged
        for attr, kind in kinds.items():
            if self._schema.get(attr, kind) != kind:
                raise SchemaConflict(attr, self._schema[attr])
        self._schema.update(kinds)
        self._version += 1
        for item, rec in records.items():
            if rec is None:
                self._records.pop(item, None)
            else:
                self._records[item] = rec
            self._changed[item] = self._version
        return self._version

    async def get(self, item_id: str) -> str | None:
        return self._records.get(item_id)

    async def version(self) -> int:
        return self._version

    async def changes(self, since: int, upto: int) -> tuple[int, dict[str, str], list[Change]]:
        got = [(i, v, self._records.get(i)) for i, v in self._changed.items() if since < v <= upto]
        return self._version, dict(self._schema), got

    async def scan(self, count: int = 5000) -> AsyncIterator[list[tuple[str, str]]]:
        rows = list(self._records.items())
        for s in range(0, len(rows), count):
            yield rows[s : s + count]

    async def close(self) -> None:
        return None


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"redis: {type(exc).__name__}: {exc}")


def _written(res: list[Any]) -> int:
    if res[0] == "conflict":
        raise SchemaConflict(str(res[1]), str(res[2]))
    if res[0] == "changed":
        raise RecordChanged
    return int(res[1])


class RedisCatalog:
    """On the event store's Redis (its pooled client: short timeouts, no retries)."""

    kind = "redis"

    def __init__(self, redis: Any, prefix: str, timeout: float) -> None:
        self.redis = redis
        self.keys = keys(prefix)
        self.timeout = max(1.0, 4 * timeout)  # background reads: a hung Redis must not hang the follower

    async def _call(self, coro: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await coro
        except _ERRORS as exc:
            raise _unavailable(exc) from exc

    async def write(self, records: dict[str, str | None], kinds: dict[str, str], expect: str | None = None) -> int:
        args = write_args(records, kinds, expect)
        return _written(await self._call(self.redis.eval(WRITE_LUA, len(self.keys), *self.keys, *args)))

    async def get(self, item_id: str) -> str | None:
        raw = await self._call(self.redis.hget(self.keys[1], item_id))
        return None if raw is None else str(raw)

    async def version(self) -> int:
        return int(await self._call(self.redis.get(self.keys[0])) or 0)

    async def changes(self, since: int, upto: int) -> tuple[int, dict[str, str], list[Change]]:
        res = await self._call(self.redis.eval(CHANGES_LUA, len(self.keys), *self.keys, since, upto))
        flat = res[1]
        schema = dict(zip(flat[::2], flat[1::2], strict=True))
        got = [(res[j], int(res[j + 1]), res[j + 2] or None) for j in range(2, len(res), 3)]
        return int(res[0]), schema, got

    async def scan(self, count: int = 5000) -> AsyncIterator[list[tuple[str, str]]]:
        cursor: Any = 0
        while True:
            cursor, chunk = await self._call(self.redis.hscan(self.keys[1], cursor, count=count))
            if chunk:
                yield list(chunk.items())
            if not cursor:
                return

    async def close(self) -> None:
        return None  # the pooled client is the event store's, closed with it


class ClusterCatalog(RedisCatalog):
    """On a Redis Cluster: every key in the `{catalog}` slot. Reads go through the cluster client;
    a write runs on a connection to the slot's master so that WAIT (SEQREC_REDIS_WAIT_REPLICAS)
    counts exactly its own write, as an event batch does (app/stores/cluster.py)."""

    kind = "redis-cluster"

    def __init__(self, store: Any, prefix: str, timeout: float, wait_replicas: int, wait_timeout_ms: int) -> None:
        super().__init__(store.redis, prefix, timeout)
        self.store = store
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._master: tuple[str, Redis] | None = None

    async def _master_client(self) -> Redis:
        cluster = self.store.redis
        await cluster.initialize()
        node = cluster.get_node_from_key(self.keys[0])
        if self._master is None or self._master[0] != node.name:
            if self._master is not None:
                await self._master[1].aclose()
            client = Redis(
                host=node.host,
                port=node.port,
                decode_responses=True,
                socket_timeout=self.timeout + self.wait_timeout_ms / 1000,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                **self.store.credentials(),
            )
            self._master = (node.name, client)
        return self._master[1]

    async def write(self, records: dict[str, str | None], kinds: dict[str, str], expect: str | None = None) -> int:
        args = write_args(records, kinds, expect)
        try:
            client = await self._master_client()
            pipe = client.pipeline(transaction=False)
            pipe.eval(WRITE_LUA, len(self.keys), *self.keys, *args)
            if self.wait_replicas:
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            res = await pipe.execute()
        except _ERRORS as exc:
            # A failover or a moved slot: reload the slot map, so that the next write finds the new master.
            with contextlib.suppress(*_ERRORS):
                await self.store.redis.nodes_manager.initialize()
            raise _unavailable(exc) from exc
        version = _written(res[0])
        if self.wait_replicas and int(res[1]) < self.wait_replicas:
            raise StoreUnavailable(f"catalogue write reached {res[1]} of {self.wait_replicas} replicas in time")
        return version

    async def close(self) -> None:
        if self._master is not None:
            await self._master[1].aclose()
