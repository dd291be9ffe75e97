"""Cached user vectors: a read whose encoded history did not change skips the ONNX encoder.

An entry is keyed by the user and the bundle name and holds `digest || user_vec`, where the
digest is a BLAKE2b hash of the bundle's identity (name, version, checksums of its files) and
of the model indices actually encoded (the last `max_len`). A read fetches the history and the
entry in one round trip, encodes the history as before, and reuses the stored vector only when
its digest equals the digest of what it would encode now. So a vector computed from another
history, by another bundle version, or by another process is never served: any acknowledged
write changes the history a read fetches, hence the digest, hence forces a recompute.

- Redis: a hash `{prefix}v:{user}` (field = bundle name) next to the history `{prefix}h:{user}`
  (on a Redis Cluster with the same `{user}` hash tag, so in the history's slot), expiring `ttl_s`
  after its last write. In process (memory store): a bounded LRU dict.
- Written after the answer is computed, in a background task: a cache write that fails (Redis
  down, timeout) is counted and forgotten, never fails the request.
- Items registered online (POST /items) get process-local indices, so a history holding one is
  not cached (its indices alone do not identify the items across processes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from app.stores import ClusterStore, EventStore, RedisStore, StoreUnavailable
from app.stores.base import items_of, timed_items_of

if TYPE_CHECKING:
    from app.bundle import Bundle

log = logging.getLogger("seqrec.userstate")

DIGEST_BYTES = 16
_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
_tags: weakref.WeakKeyDictionary[Bundle, bytes] = weakref.WeakKeyDictionary()


def bundle_tag(bundle: Bundle) -> bytes:
    """What identifies the encoder: a reloaded or retrained bundle (same name) gets another tag."""
    tag = _tags.get(bundle)
    if tag is None:
        ident = {
            "name": bundle.name,
            "version": bundle.version,
            "max_len": bundle.max_len,
            "files": bundle.manifest.files,
        }
        tag = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).digest()
        _tags[bundle] = tag
    return tag


def history_digest(bundle: Bundle, seen: np.ndarray, times: np.ndarray | None = None) -> bytes | None:
    """Digest of what `bundle.user_vectors([seen], [times])` encodes; None when it must not be cached.

    For a bundle that reads event times, the digest covers the whole history and its times (a
    history transform may read every event), not only the last max_len indices.
    """
    if bundle.needs_times:
        if times is None:
            return None
        seq = np.ascontiguousarray(seen, dtype=np.int64)
    else:
        seq = np.ascontiguousarray(seen[-bundle.max_len :], dtype=np.int64)
    if len(seq) and int(seq.max()) > bundle.manifest.num_items:
        return None  # an online-registered item: its index is this process's, see the module doc
    h = hashlib.blake2b(bundle_tag(bundle), digest_size=DIGEST_BYTES)
    h.update(seq.tobytes())
    if bundle.needs_times and times is not None:
        h.update(np.ascontiguousarray(times, dtype=np.int64).tobytes())
    return h.digest()


Read = tuple[list[str], list[float] | None, bytes | None]  # item ids, their times (when asked), entry


class CacheBackend(Protocol):
    async def read(self, user_id: str, n: int, field: str, with_times: bool = False) -> Read:
        """The user's last n item ids (raises StoreUnavailable like `EventStore.history`), their
        times when `with_times`, and the entry."""
        ...

    async def write(self, user_id: str, field: str, blob: bytes) -> None: ...


class RedisBackend:
    """History and entry in one pipelined round trip; the entry's failure alone is only a miss.

    Single Redis: the entry is `{prefix}v:{user}` next to `{prefix}h:{user}`. Redis Cluster: the
    store's per-user key `{prefix}v:{{user}}`, in the history's slot, so both go to one master in
    one pipeline.
    """

    def __init__(self, store: RedisStore | ClusterStore, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s

    def key(self, user_id: str) -> str:
        if isinstance(self.store, ClusterStore):
            return self.store.user_key("v", user_id)
        return f"{self.store.prefix}v:{user_id}"

    async def _client(self, user_id: str) -> Redis:
        if isinstance(self.store, ClusterStore):
            await self.store._topology()  # the store's own slot map: the master that holds this user
            return self.store._client(self.store._master(user_id), raw=True)
        return self.store.raw

    async def read(self, user_id: str, n: int, field: str, with_times: bool = False) -> Read:
        try:
            async with asyncio.timeout(self.store.read_timeout_s):
                pipe = (await self._client(user_id)).pipeline(transaction=False)
                pipe.zrange(self.store.key(user_id), -n, -1, withscores=with_times)
                pipe.hget(self.key(user_id), field)
                members, blob = await pipe.execute(raise_on_error=False)
        except _ERRORS as exc:
            if isinstance(self.store, ClusterStore):
                self.store._stale = True  # as the store's own read does: reload the map next time
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if isinstance(members, Exception):
            raise StoreUnavailable(f"redis: {type(members).__name__}: {members}")
        entry = blob if isinstance(blob, bytes) else None
        if with_times:
            items, times = timed_items_of(members)
            return items, times, entry
        return items_of(members), None, entry

    async def write(self, user_id: str, field: str, blob: bytes) -> None:
        async with asyncio.timeout(self.store.read_timeout_s):
            pipe = (await self._client(user_id)).pipeline(transaction=False)
            pipe.hset(self.key(user_id), field, blob)
            pipe.expire(self.key(user_id), self.ttl_s)
            await pipe.execute(raise_on_error=True)


class MemoryBackend:
    """In process, next to the MemoryStore: bounded (LRU) and expiring like the Redis hash."""

    def __init__(self, store: EventStore, ttl_s: float, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()

    async def read(self, user_id: str, n: int, field: str, with_times: bool = False) -> Read:
        times: list[float] | None = None
        if with_times:
            history, times = await self.store.history_times(user_id, n)
        else:
            history = await self.store.history(user_id, n)
        hit = self._entries.get((user_id, field))
        if hit is None or time.monotonic() - hit[0] >= self.ttl_s:
            return history, times, None
        return history, times, hit[1]

    async def write(self, user_id: str, field: str, blob: bytes) -> None:
        self.put(user_id, field, blob)

    def put(self, user_id: str, field: str, blob: bytes) -> None:
        key = (user_id, field)
        self._entries[key] = (time.monotonic(), blob)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class UserCache:
    """The read path's user vectors: cached when enabled, recomputed whenever the digest differs."""

    def __init__(self, store: EventStore, enabled: bool, ttl_s: int, registry: CollectorRegistry) -> None:
        self.store = store
        self.enabled = enabled
        self.backend: CacheBackend = (
            RedisBackend(store, ttl_s) if isinstance(store, RedisStore | ClusterStore) else MemoryBackend(store, ttl_s)
        )
        self.lookups = Counter(
            "seqrec_user_cache_total", "User-vector cache lookups by outcome", ["outcome"], registry=registry
        )
        self._writes: set[asyncio.Task[None]] = set()  # strong references until each write is done

    async def read(self, user_id: str, n: int, bundle: Bundle) -> Read:
        """The user's history (StoreUnavailable as from the store), its times when the bundle reads
        them, and the cache entry, if any."""
        timed = bundle.needs_times
        if not self.enabled:
            if timed:
                history, times = await self.store.history_times(user_id, n)
                return history, times, None
            return await self.store.history(user_id, n), None, None
        return await self.backend.read(user_id, n, bundle.name, timed)

    def user_vector(
        self, user_id: str, bundle: Bundle, seen: np.ndarray, entry: bytes | None, times: np.ndarray | None = None
    ) -> np.ndarray:
        """(1, D) user vector of `seen` [with its times]: the entry's when its digest matches, else
        computed (and stored)."""
        digest = history_digest(bundle, seen, times) if self.enabled else None
        tms = None if times is None else [times]
        if digest is None:
            return bundle.user_vectors([seen], tms)
        if entry is not None and len(entry) == DIGEST_BYTES + 4 * bundle.dim and entry[:DIGEST_BYTES] == digest:
            self.lookups.labels("hit").inc()
            return np.frombuffer(entry, dtype=np.float32, offset=DIGEST_BYTES).reshape(1, bundle.dim)
        self.lookups.labels("miss").inc()
        vec = np.ascontiguousarray(bundle.user_vectors([seen], tms), dtype=np.float32)
        if isinstance(self.backend, MemoryBackend):  # nothing to wait for: stored before the answer leaves
            self.backend.put(user_id, bundle.name, digest + vec.tobytes())
            return vec
        task = asyncio.get_running_loop().create_task(self._store(user_id, bundle.name, digest + vec.tobytes()))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return vec

    async def _store(self, user_id: str, field: str, blob: bytes) -> None:
        try:
            await self.backend.write(user_id, field, blob)
        except _ERRORS as exc:  # the answer is already computed: a lost entry is just a later miss
            self.lookups.labels("write_error").inc()
            log.debug("user cache write failed: %r", exc)

    async def drain(self) -> None:
        """Wait for the cache writes in flight (tests; shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
