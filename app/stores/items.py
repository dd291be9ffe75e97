"""What every API process shares: registered items, their vectors, and the served configuration.

Items (POST /items, DELETE /items/{id}). The item's *fields* are the record; its vector belongs
to one bundle version, so vectors are cached per `encoding_key` (a digest of the text graphs,
tokenizer and compose rule) next to a hash of the text they were computed from. An item is
thus encoded once per bundle version, by whichever process meets it first, and every other
process (and every reload) reads the vector back instead of running the text encoder again.
A changed text (same id posted again) misses the cache by its hash and is encoded afresh.

Served configuration (POST /admin/reload). The desired bundle paths and default model are
stored with a generation number; each process applies a newer generation when announced (or
when it catches up after a reconnect, or at start) and acknowledges it under
`{prefix}config:acks:{generation}`. Processes heartbeat into `{prefix}workers`, so a reload
can say which live processes applied it.

Redis layout (all under the key prefix):
  items                 hash: item id -> item JSON
  itemvec:{key}         hash: item id -> "{text hash}:{base64 float32 vector}"
  config                hash: generation, spec (JSON: bundles, default_model)
  config:acks:{gen}     hash: worker -> "ok" | "rejected: ..."  (expires after a day)
  workers               sorted set: worker -> last heartbeat (epoch s)
  items:new             channel: {"items": [...]}, {"deleted": [...]}, {"config": generation}
A write and its announcement go in one MULTI, so whatever is announced is readable. Every
process subscribes *before* it catches up, so nothing announced in between is lost, and
catches up again after a resubscribe (Redis restart) and after every bundle reload.
In process (no Redis): dicts; the one process is the whole fleet.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from app.stores.base import StoreUnavailable

log = logging.getLogger("seqrec.app")
_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
LIVE_S = 10.0  # a process that has not heartbeaten for this long is not counted as live
ACK_TTL_S = 86400

Item = dict[str, Any]  # item_id, title, description?, categories?, brand?
Encoded = dict[str, dict[str, tuple[str, np.ndarray]]]  # encoding key -> item id -> (text hash, vector)


@dataclass
class Announcement:
    items: list[Item] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    config: int | None = None  # a generation to apply
    resync: bool = False  # (re)subscribed: catch up with everything


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class ItemRegistry(Protocol):
    kind: str
    worker: str
    generation: int  # of the served configuration this process applied
    spec: dict[str, Any]  # that configuration: {"bundles": [...], "default_model": ...}

    async def put(self, items: list[Item], encoded: Encoded) -> None:
        """Store (or replace) items with their vectors and announce them; StoreUnavailable on failure."""
        ...

    async def delete(self, item_id: str, keys: list[str]) -> bool:
        """Remove a registered item (and its vectors under `keys`) and announce it; False if unknown."""
        ...

    async def get(self, item_id: str) -> Item | None: ...

    async def all(self) -> list[Item]: ...

    async def vectors(self, key: str, ids: list[str]) -> dict[str, tuple[str, np.ndarray]]: ...

    async def save_vectors(self, key: str, entries: dict[str, tuple[str, np.ndarray]]) -> None: ...

    async def stored_config(self) -> tuple[int, dict[str, Any]] | None: ...

    async def publish_config(self, spec: dict[str, Any]) -> int:
        """Store a new served configuration and announce it; returns its generation."""
        ...

    async def ack(self, generation: int, outcome: str) -> None: ...

    async def reach(self, generation: int) -> tuple[list[str], dict[str, str]]:
        """(live workers, worker -> outcome for those that acknowledged `generation`)."""
        ...

    async def heartbeat(self) -> None: ...

    def announcements(self) -> AsyncIterator[Announcement]:
        """What any process announced (yields forever; reconnects itself)."""
        ...

    async def close(self) -> None: ...


class MemoryItems:
    kind = "memory"

    def __init__(self) -> None:
        self._items: dict[str, Item] = {}
        self._vecs: Encoded = {}
        self.worker = worker_name()
        self.generation = 0
        self.spec: dict[str, Any] = {}
        self._acks: dict[int, str] = {}

    async def put(self, items: list[Item], encoded: Encoded) -> None:
        self._items.update({it["item_id"]: it for it in items})
        for key, entries in encoded.items():
            self._vecs.setdefault(key, {}).update(entries)

    async def delete(self, item_id: str, keys: list[str]) -> bool:
        for entries in self._vecs.values():
            entries.pop(item_id, None)
        return self._items.pop(item_id, None) is not None

    async def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    async def all(self) -> list[Item]:
        return list(self._items.values())

    async def vectors(self, key: str, ids: list[str]) -> dict[str, tuple[str, np.ndarray]]:
        have = self._vecs.get(key, {})
        return {i: have[i] for i in ids if i in have}

    async def save_vectors(self, key: str, entries: dict[str, tuple[str, np.ndarray]]) -> None:
        self._vecs.setdefault(key, {}).update(entries)

    async def stored_config(self) -> tuple[int, dict[str, Any]] | None:
        return None  # nothing outlives the process

    async def publish_config(self, spec: dict[str, Any]) -> int:
        return self.generation + 1

    async def ack(self, generation: int, outcome: str) -> None:
        self._acks[generation] = outcome

    async def reach(self, generation: int) -> tuple[list[str], dict[str, str]]:
        got = self._acks.get(generation)
        return [self.worker], ({self.worker: got} if got is not None else {})

    async def heartbeat(self) -> None:
        return None

    async def announcements(self) -> AsyncIterator[Announcement]:
        # One process only: the receiving process applies every change itself, nobody else needs telling.
        await asyncio.Event().wait()
        yield Announcement()

    async def close(self) -> None:
        return None


def _pack(th: str, vec: np.ndarray) -> str:
    return f"{th}:{base64.b64encode(np.ascontiguousarray(vec, np.float32).tobytes()).decode()}"


def _unpack(raw: str) -> tuple[str, np.ndarray] | None:
    th, _, b64 = raw.partition(":")
    try:
        return th, np.frombuffer(base64.b64decode(b64), dtype=np.float32)
    except ValueError:
        return None


class RedisItems:
    kind = "redis"

    def __init__(self, redis: Redis, url: str, prefix: str, timeout: float) -> None:
        self.redis = redis  # the store's pooled client: short timeouts
        self.url = url
        self.prefix = prefix
        self.key = f"{prefix}items"
        self.channel = f"{prefix}items:new"
        self.config_key = f"{prefix}config"
        self.workers_key = f"{prefix}workers"
        self.timeout = timeout
        self.subscribed = asyncio.Event()  # set once the subscription is live (tests wait on it)
        self.worker = worker_name()
        self.generation = 0
        self.spec: dict[str, Any] = {}

    def _announce(self, pipe: Any, data: str) -> None:
        pipe.publish(self.channel, data)

    # The subscription, in three steps a Redis Cluster does differently (app/stores/cluster_items.py).
    async def _subscriber(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=self.timeout)

    async def _subscribe(self, pubsub: Any) -> None:
        await pubsub.subscribe(self.channel)

    def _data(self, pubsub: Any, msg: dict[str, Any] | None) -> str | None:
        return msg["data"] if msg is not None and msg.get("type") == "message" else None

    def _vec_key(self, key: str) -> str:
        return f"{self.prefix}itemvec:{key}"

    async def _run(self, pipe: Any) -> list[Any]:
        try:
            done: list[Any] = await pipe.execute()
            return done
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def put(self, items: list[Item], encoded: Encoded) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, mapping={it["item_id"]: json.dumps(it) for it in items})
        for key, entries in encoded.items():
            if entries:
                pipe.hset(self._vec_key(key), mapping={i: _pack(th, v) for i, (th, v) in entries.items()})
        self._announce(pipe, json.dumps({"items": items}))
        await self._run(pipe)

    async def delete(self, item_id: str, keys: list[str]) -> bool:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.key, item_id)
        for key in keys:
            pipe.hdel(self._vec_key(key), item_id)
        self._announce(pipe, json.dumps({"deleted": [item_id]}))
        res = await self._run(pipe)
        return bool(res[0])

    async def get(self, item_id: str) -> Item | None:
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self.redis.hget(self.key, item_id)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return json.loads(raw) if raw is not None else None

    async def all(self) -> list[Item]:
        try:
            raw = await self.redis.hgetall(self.key)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return [json.loads(v) for v in raw.values()]

    async def vectors(self, key: str, ids: list[str]) -> dict[str, tuple[str, np.ndarray]]:
        if not ids:
            return {}
        try:
            raw = await self.redis.hmget(self._vec_key(key), ids)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        out = {}
        for i, r in zip(ids, raw, strict=True):
            got = _unpack(r.decode() if isinstance(r, bytes) else r) if r is not None else None
            if got is not None:
                out[i] = got
        return out

    async def save_vectors(self, key: str, entries: dict[str, tuple[str, np.ndarray]]) -> None:
        if entries:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self._vec_key(key), mapping={i: _pack(th, v) for i, (th, v) in entries.items()})
            await self._run(pipe)

    async def stored_config(self) -> tuple[int, dict[str, Any]] | None:
        try:
            raw = await self.redis.hgetall(self.config_key)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if not raw.get("generation") or not raw.get("spec"):
            return None
        return int(raw["generation"]), json.loads(raw["spec"])

    # Atomic: a new generation, its configuration and its announcement (concurrent reloads in
    # different processes get distinct generations, and the stored spec is the latest one's).
    _PUBLISH = """
    local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
    redis.call('HSET', KEYS[1], 'spec', ARGV[1])
    redis.call('PUBLISH', ARGV[2], cjson.encode({config = g}))
    return g
    """

    async def publish_config(self, spec: dict[str, Any]) -> int:
        try:
            return int(await self.redis.eval(self._PUBLISH, 1, self.config_key, json.dumps(spec), self.channel))
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def ack(self, generation: int, outcome: str) -> None:
        key = f"{self.config_key}:acks:{generation}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, self.worker, outcome)
        pipe.expire(key, ACK_TTL_S)
        try:
            await self._run(pipe)
        except StoreUnavailable as exc:
            log.warning("cannot acknowledge configuration %d: %s", generation, exc)

    async def reach(self, generation: int) -> tuple[list[str], dict[str, str]]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(self.workers_key, time.time() - LIVE_S, "+inf")
        pipe.hgetall(f"{self.config_key}:acks:{generation}")
        live, acks = await self._run(pipe)
        return list(live), dict(acks)

    async def heartbeat(self) -> None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.workers_key, {self.worker: now})
        pipe.zremrangebyscore(self.workers_key, "-inf", now - 6 * LIVE_S)  # long-gone processes
        await self._run(pipe)

    async def announcements(self) -> AsyncIterator[Announcement]:
        """Subscribe (own connection, no read timeout: it idles between announcements); after
        each (re)subscription, yield a resync so the follower catches up with everything."""
        while True:
            client: Any = None
            pubsub: Any = None
            try:
                client = await self._subscriber()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await self._subscribe(pubsub)
                self.subscribed.set()
                yield Announcement(resync=True)
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # redis-py's timed read can swallow a cancellation: honour it here.
                        raise asyncio.CancelledError
                    data = self._data(pubsub, msg)
                    if data is not None:
                        yield _parse(data)
            except (*_ERRORS, StoreUnavailable) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # A read timeout that raced our cancellation: shutting down, not an outage.
                    raise asyncio.CancelledError from exc
                self.subscribed.clear()
                log.warning("announcements: %s; resubscribing in 1 s", exc)
                await asyncio.sleep(1.0)
            finally:
                if pubsub is not None:
                    await pubsub.aclose()
                if client is not None:
                    await client.aclose()

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.zrem(self.workers_key, self.worker)  # no longer counted as live
        except _ERRORS:
            pass
        # the pooled client is the store's, closed with it


def _parse(data: str) -> Announcement:
    msg = json.loads(data)
    if isinstance(msg, list):  # the format of processes that predate deletes and configurations
        return Announcement(items=msg)
    config = msg.get("config")
    return Announcement(
        items=list(msg.get("items", [])), deleted=list(msg.get("deleted", [])), config=int(config) if config else None
    )
