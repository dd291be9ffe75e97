"""Redis Cluster store: the same contract as RedisStore (one sorted set per user, the same Lua
append), spread over the masters of a cluster by hash slot.

Keys. Every key of one user carries the hash tag `{user}`: `{prefix}h:{user}` (history),
`{prefix}x:{user}` (the exclusion set, app/stores/base.py) and any other per-user key
(`user_key(kind, user)` -> `{prefix}{kind}:{user}`), so one user's keys live in
one slot, on one master, and a script or MULTI over them is legal. A `}` (or `%`) in a user id
is written as `%7D` (`%25`) inside the tag, so the tag is the whole id, never empty and never cut
short; `user_of_key` reverses it.
The single-Redis store keeps its untagged keys (`{prefix}h:` + user, no braces) so that existing
data stays readable; app/stores/migrate.py copies histories between the two shapes.
The event log is one stream per hash slot, `{prefix}log:{<slot tag>}`, named so that it is in the
slot of the users it logs (app/stores/eventlog.py), so the one script call per user stays legal.

Writes. A batch is grouped by the master that owns each user's slot and written as one pipeline
per master, all masters at once. Each pipeline runs on one connection, so an optional `WAIT n t`
at its end asks exactly for that connection's writes to reach `n` replicas. The outcome is per
master: when every master confirmed, the batch is acknowledged; when none did, StoreUnavailable
(nothing of the batch is acknowledged); when some did, PartialAppend says which users' events
are stored and which are not. Retrying the whole batch is safe: events are idempotent by event
id, so the stored ones count as duplicates the second time.

Topology. A connection error or a MOVED/CLUSTERDOWN answer marks the slot map stale; the next
write reloads it (at most every `refresh_s`), so after a failover writes reach the promoted
replica without a restart. Meanwhile the dead master's users are answered 503, never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

from app.stores.base import (
    AppendResult,
    Event,
    LoggedEvent,
    PartialAppend,
    StoreUnavailable,
    UserRead,
    excluded_of,
    items_of,
    timed_items_of,
)
from app.stores.eventlog import (
    INDEX,
    STREAM,
    EventLog,
    default_log,
    glob_escape,
    read_stream,
    slot_tag,
)
from app.stores.redis import APPEND_LUA, append_args, append_call, read_user, user_batches

log = logging.getLogger("seqrec.app")
_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# Answers that mean "the slot map this process holds is out of date" (resharding, failover).
_STALE = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def startup_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`redis+cluster://[user:pass@]host:port[,host:port...]` (or a plain redis:// URL with a
    comma-separated host list) -> startup nodes and client options (password, TLS)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    opts: dict[str, Any] = {}
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, password = auth.partition(":")
        if user:
            opts["username"] = unquote(user)
        if password:
            opts["password"] = unquote(password)
    if parts.scheme.startswith("rediss"):
        opts["ssl"] = True
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0: drop the /db part of the URL")
    nodes = []
    for hp in netloc.split(","):
        host, _, port = hp.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("a Redis Cluster URL needs at least one host:port")
    return nodes, opts


def tag(user_id: str) -> str:
    """The hash tag of a user: the whole id, with `%` and `}` escaped so the tag ends where the id does."""
    return "{" + user_id.replace("%", "%25").replace("}", "%7D") + "}"


def user_of_tag(tagged: str) -> str:
    return tagged[1:-1].replace("%7D", "}").replace("%25", "%")


@dataclass
class _NodeWrite:
    users: list[str]
    events: int
    result: list[Any] = field(default_factory=list)
    error: str | None = None


class ClusterStore:
    kind = "redis-cluster"

    def __init__(
        self,
        url: str,
        max_history: int,
        ttl_s: int,
        prefix: str = "seqrec:",
        read_timeout: float = 0.25,
        pool_size: int = 64,
        write_timeout: float = 2.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        refresh_s: float = 0.2,
        event_log: EventLog | None = default_log(),  # frozen: one shared default is safe
        max_excluded: int = 1000,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            # A tag in the prefix would put every key of every user into one slot.
            raise ValueError("SEQREC_KEY_PREFIX may not contain '{' or '}' on a Redis Cluster")
        self.max_history = max_history
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.read_timeout = read_timeout
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.refresh_s = refresh_s
        self.event_log = event_log  # None: the window only (SEQREC_EVENT_LOG=false)
        self.max_excluded = max_excluded
        if event_log is not None:
            slot_tag(0)  # the slot tags' table (~0.06 s) now, not in the first write
        nodes, auth = startup_nodes(url)
        self._opts: dict[str, Any] = {
            "socket_timeout": max(read_timeout, write_timeout + wait_timeout_ms / 1000),
            "socket_connect_timeout": read_timeout,
            "retry": Retry(NoBackoff(), 0),
            **auth,
        }
        cluster_opts = {
            **self._opts,
            "startup_nodes": [ClusterNode(h, p) for h, p in nodes],
            "max_connections": pool_size,
            # Serve the slots that have a master while another master is down (its users get 503 / popularity).
            "require_full_coverage": False,
        }
        # The cluster client holds the slot map (and serves the item registry); events go through plain
        # clients of each master, so a batch is one pipeline per master and WAIT sees its writes.
        self.redis = RedisCluster(decode_responses=True, **cluster_opts)
        self.pool_size = pool_size
        self._nodes: dict[str, Redis] = {}  # "host:port" -> a client of that master
        # History reads take raw bytes, as in RedisStore (one decode per history, not per member).
        self._raw: dict[str, Redis] = {}
        self._stale = True
        self._refreshed = 0.0
        self._refreshed_once = False
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ keys
    def key(self, user_id: str) -> str:
        return f"{self.prefix}h:{tag(user_id)}"

    def excluded_key(self, user_id: str) -> str:
        """The user's exclusion set, in the history's slot."""
        return self.user_key("x", user_id)

    def user_key(self, kind: str, user_id: str) -> str:
        """`{prefix}{kind}:{user}`: any per-user key, in the user's slot."""
        return f"{self.prefix}{kind}:{tag(user_id)}"

    def user_of_key(self, key: str) -> str:
        return user_of_tag(key[len(self.prefix) + 2 :])

    def log_key(self, user_id: str) -> str:
        """The log stream of the user's slot: `{prefix}log:{<slot tag>}`, in the history's slot."""
        return f"{self.prefix}{STREAM}:{{{slot_tag(key_slot(self.key(user_id).encode()))}}}"

    # ------------------------------------------------------------------ topology
    async def _topology(self) -> None:
        """(Re)load the slot map when it is stale, at most every `refresh_s`."""
        if not self._stale:
            return
        async with self._lock:
            if not self._stale or (self._refreshed_once and time.monotonic() - self._refreshed < self.refresh_s):
                return
            self._refreshed = time.monotonic()
            try:
                async with asyncio.timeout(max(1.0, self.read_timeout * 4)):
                    if self._refreshed_once:
                        await self.redis.nodes_manager.initialize()  # a fresh CLUSTER SLOTS, not the cached map
                    else:
                        await self.redis.initialize()
            except _ERRORS as exc:
                if not self._refreshed_once:
                    raise StoreUnavailable(
                        f"redis cluster: cannot load the slot map: {type(exc).__name__}: {exc}"
                    ) from exc
                # Keep the map held so far: the masters that still answer keep taking their users' writes.
                log.warning("redis cluster: cannot reload the slot map: %s: %s", type(exc).__name__, exc)
                return
            self._refreshed_once = True

    # The seams the per-user cache (app/stores/usercache.py) uses, shared with RedisStore.
    shares_connection = False  # one master per user: reads of several users do not batch

    def shared_redis(self) -> ClusterStore:
        return self

    def entry_key(self, user_id: str, field: str) -> str:
        """A per-user entry in the history's slot (same `{user}` hash tag)."""
        return f"{self.user_key('v', user_id)}:{field}"

    async def user_client(self, user_id: str) -> Redis:
        """The raw-bytes client of the master that holds this user's slot (from the store's map)."""
        await self._topology()
        return self._client(self._master(user_id), raw=True)

    def connection_failed(self) -> None:
        """A command to this user's master failed: reload the slot map before the next one."""
        self._stale = True

    async def master_clients(self) -> list[Redis]:
        """A raw-bytes client of every master (current map): for walking all keys with SCAN."""
        await self._topology()
        return [self._client(node.name, raw=True) for node in self.redis.get_primaries()]

    def credentials(self) -> dict[str, Any]:
        """The connection options a client of another node needs (user, password, TLS)."""
        return {k: v for k, v in self._opts.items() if k in ("username", "password", "ssl")}

    def _master(self, user_id: str) -> str:
        slot = key_slot(self.key(user_id).encode())
        try:
            return self.redis.nodes_manager.get_node_from_slot(slot).name
        except (KeyError, IndexError) as exc:  # no map loaded yet, or the slot has no master
            raise SlotNotCoveredError(f"no master known for slot {slot}") from exc

    def _client(self, name: str, raw: bool = False) -> Redis:
        clients = self._raw if raw else self._nodes
        c = clients.get(name)
        if c is None:
            host, _, port = name.rpartition(":")
            c = Redis(host=host, port=int(port), decode_responses=not raw, max_connections=self.pool_size, **self._opts)
            clients[name] = c
        return c

    # ------------------------------------------------------------------ writes
    async def _write(
        self, name: str, part: _NodeWrite, batches: dict[str, dict[str, float]], away: dict[str, dict[str, float]]
    ) -> None:
        if name == "-":
            part.error = "no master serves these users' slots"
            return
        pipe = self._client(name).pipeline(transaction=False)
        now = time.time()
        for user in part.users:
            args = append_args(self.max_history, self.ttl_s, batches[user], away.get(user), self.max_excluded)
            log, index = self.event_log, self.user_key(INDEX, user)
            stream = self.log_key(user) if log is not None else ""
            keys, argv = append_call(self.key(user), self.excluded_key(user), args, log, stream, index, user, now)
            pipe.eval(APPEND_LUA, len(keys), *keys, *argv)
        if self.wait_replicas:
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        try:
            res = await pipe.execute(raise_on_error=False)
        except _ERRORS as exc:
            self._stale = True  # a dead master: its replica may be promoted by the next write
            part.error = f"{name}: {type(exc).__name__}: {exc}"
            return
        errors = [r for r in res if isinstance(r, Exception)]
        if errors:
            if any(str(e).startswith(_STALE) for e in errors):
                self._stale = True
            part.error = f"{name}: {type(errors[0]).__name__}: {errors[0]}"
            return
        if self.wait_replicas:
            acked = int(res[-1])
            res = res[:-1]
            if acked < self.wait_replicas:
                # On the master only: a failover now could lose it, so it is not acknowledged.
                part.error = f"{name}: WAIT: {acked} of {self.wait_replicas} replicas within {self.wait_timeout_ms} ms"
                return
        part.result = res

    async def append(self, events: list[Event]) -> AppendResult:
        batches, away = user_batches(events)  # first copy in a batch wins, like NX
        counts: dict[str, int] = defaultdict(int)
        for ev in events:
            counts[ev.user_id] += 1
        await self._topology()
        parts: dict[str, _NodeWrite] = {}
        for user in batches:
            try:
                owner = self._master(user)
            except RedisClusterException:  # a slot without a master (failover under way): those users fail
                self._stale = True
                owner = "-"
            part = parts.setdefault(owner, _NodeWrite([], 0))
            part.users.append(user)
            part.events += counts[user]
        await asyncio.gather(*(self._write(name, part, batches, away) for name, part in parts.items()))
        ok = [p for p in parts.values() if p.error is None]
        failed = [p for p in parts.values() if p.error is not None]
        res = [r for p in ok for r in p.result]
        accepted = sum(int(r[0]) for r in res)
        too_old = sum(int(r[2]) for r in res)
        stored_events = sum(p.events for p in ok)
        # Copies repeated inside the batch never reach the script: they are duplicates too.
        result = AppendResult(accepted=accepted, duplicates=stored_events - accepted - too_old, too_old=too_old)
        if not failed:
            return result
        cause = "redis cluster: " + "; ".join(str(p.error) for p in failed)
        if not ok:
            raise StoreUnavailable(cause)
        users = [u for p in failed for u in p.users]
        raise PartialAppend(result, stored_events, users, sum(p.events for p in failed), cause)

    # ------------------------------------------------------------------ reads
    async def _tail(self, user_id: str, n: int | None, withscores: bool) -> list[Any]:
        """The last n members of the user's history (with their scores), from its master."""
        n = self.max_history if n is None else n
        try:
            async with asyncio.timeout(self.read_timeout):
                await self._topology()
                client = self._client(self._master(user_id), raw=True)
                return await client.zrange(self.key(user_id), -n, -1, withscores=withscores)
        except _ERRORS as exc:
            self._stale = True  # a dead master or a moved slot: reload the map before the next command
            raise StoreUnavailable(f"redis cluster: {type(exc).__name__}: {exc}") from exc

    async def history(self, user_id: str, n: int | None = None) -> list[str]:
        return items_of(await self._tail(user_id, n, withscores=False))

    async def history_times(self, user_id: str, n: int | None = None) -> tuple[list[str], list[float]]:
        return timed_items_of(await self._tail(user_id, n, withscores=True))

    async def read(
        self, user_id: str, n: int | None = None, with_times: bool = False, with_types: bool = False
    ) -> UserRead:
        """History and exclusion set in one round trip to the user's master (both keys in one slot)."""
        n = self.max_history if n is None else n
        try:
            async with asyncio.timeout(self.read_timeout):
                await self._topology()
                client = self._client(self._master(user_id), raw=True)
                keys = [self.key(user_id), self.excluded_key(user_id)]
                return await read_user(client, keys, n, with_times, with_types)
        except _ERRORS as exc:
            self._stale = True
            raise StoreUnavailable(f"redis cluster: {type(exc).__name__}: {exc}") from exc

    async def excluded(self, user_id: str) -> list[str]:
        try:
            async with asyncio.timeout(self.read_timeout):
                await self._topology()
                client = self._client(self._master(user_id), raw=True)
                return excluded_of(await client.zrange(self.excluded_key(user_id), 0, -1))
        except _ERRORS as exc:
            self._stale = True
            raise StoreUnavailable(f"redis cluster: {type(exc).__name__}: {exc}") from exc

    async def log_entries(self) -> AsyncIterator[LoggedEvent]:
        """Every event of the log, stream by stream (each in the order it was logged), from every master."""
        try:
            pattern = f"{glob_escape(self.prefix)}{STREAM}:*"
            for client in await self.master_clients():
                async for key in client.scan_iter(match=pattern, count=1000, _type="stream"):
                    async for entry in read_stream(client, key):
                        yield entry
        except _ERRORS as exc:
            self._stale = True
            raise StoreUnavailable(f"redis cluster: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> bool:
        """Ready when some master answers: a down master costs its users (503 / popularity), and
        readiness failing on every API process would cost all users instead."""
        try:
            async with asyncio.timeout(self.read_timeout * 4):
                await self._topology()
                for node in self.redis.get_primaries():
                    try:
                        if await self._client(node.name).ping():
                            return True
                    except _ERRORS:
                        self._stale = True
        except (*_ERRORS, StoreUnavailable):
            pass
        return False

    async def close(self) -> None:
        for c in [*self._nodes.values(), *self._raw.values()]:
            await c.aclose()
        await self.redis.aclose()
