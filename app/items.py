"""Items registered online (POST /items): a shared registry, and encoding them into bundles.

Registry design (why): the item's *fields* are what is stored, never its vector, because a
vector belongs to one bundle version; a bundle swap simply re-encodes every registered item.
- Redis: one hash `{prefix}items` (field = item id, value = the item as JSON), written together
  with a PUBLISH on `{prefix}items:new` in one MULTI, so an announced item is always readable.
  Every API process subscribes in its lifespan and encodes announced items into its bundles;
  it subscribes *before* it catches up (HGETALL), so nothing announced in between is lost, and
  catches up again after a resubscribe (Redis restart) and after every bundle reload.
- In process (no Redis): a dict; the one process encodes on POST, and re-encodes from the
  dict after a bundle reload.
Adding is idempotent: an item a bundle already holds is skipped (ids are unique per bundle).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.registry import Registry
from app.stores import StoreUnavailable

log = logging.getLogger("seqrec.app")
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

Item = dict[str, Any]  # item_id, title, description?, categories?, brand?


class ItemRegistry(Protocol):
    kind: str

    async def put(self, items: list[Item]) -> None:
        """Store (or replace) the items and announce them to every process; StoreUnavailable on failure."""
        ...

    async def get(self, item_id: str) -> Item | None: ...

    async def all(self) -> list[Item]: ...

    def announcements(self) -> AsyncIterator[list[Item]]:
        """Items registered by any process, as announced (yields forever; reconnects itself)."""
        ...

    async def close(self) -> None: ...


class MemoryItems:
    kind = "memory"

    def __init__(self) -> None:
        self._items: dict[str, Item] = {}

    async def put(self, items: list[Item]) -> None:
        self._items.update({it["item_id"]: it for it in items})

    async def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    async def all(self) -> list[Item]:
        return list(self._items.values())

    async def announcements(self) -> AsyncIterator[list[Item]]:
        # One process only: the receiving process encodes on POST, nobody else needs telling.
        await asyncio.Event().wait()
        yield []

    async def close(self) -> None:
        return None


class RedisItems:
    kind = "redis"

    def __init__(self, redis: Redis, url: str, prefix: str, timeout_s: float) -> None:
        self.redis = redis  # the store's pooled client: short timeouts
        self.url = url
        self.key = f"{prefix}items"
        self.channel = f"{prefix}items:new"
        self.timeout_s = timeout_s
        self.subscribed = asyncio.Event()  # set once the subscription is live (tests wait on it)

    async def put(self, items: list[Item]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, mapping={it["item_id"]: json.dumps(it) for it in items})
        pipe.publish(self.channel, json.dumps(items))
        try:
            await pipe.execute()
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def get(self, item_id: str) -> Item | None:
        try:
            async with asyncio.timeout(self.timeout_s):
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

    async def announcements(self) -> AsyncIterator[list[Item]]:
        """Subscribe (own connection, no read timeout: it idles between announcements); after
        each (re)subscription, yield every registered item once to catch up."""
        while True:
            client = Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=self.timeout_s)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                yield await self.all()
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is not None and msg.get("type") == "message":
                        yield json.loads(msg["data"])
            except (*_ERRORS, StoreUnavailable) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # A read timeout that raced our cancellation: shutting down, not an outage.
                    raise asyncio.CancelledError from exc
                self.subscribed.clear()
                log.warning("item announcements: %s; resubscribing in 1 s", exc)
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()
                await client.aclose()

    async def close(self) -> None:
        return None  # the pooled client is the store's, closed with it


async def ingest(registry: Registry, items: list[Item]) -> dict[str, list[str]]:
    """Encode items into every text-capable bundle of `registry` that lacks them.

    Returns item id -> names of the bundles that hold it afterwards. Encoding runs off the
    event loop; the add itself runs on it (no await between the last check and the add), so
    concurrent ingests of one item cannot add it twice.
    """
    items = list({it["item_id"]: it for it in items}.values())  # one item once (the last copy wins)
    for bundle in registry.bundles.values():
        if not bundle.takes_text:
            continue  # an id-only model cannot score an item it never trained on
        todo = [it for it in items if it["item_id"] not in bundle.index_of]
        if not todo:
            continue
        texts = [bundle.item_text(it) for it in todo]  # type: ignore[attr-defined]
        vecs = await asyncio.to_thread(bundle.encode_texts, texts)  # type: ignore[attr-defined]
        keep = [i for i, it in enumerate(todo) if it["item_id"] not in bundle.index_of]
        if keep:
            bundle.add_items([todo[i]["item_id"] for i in keep], vecs[keep])
    return {it["item_id"]: [b.name for b in registry.bundles.values() if it["item_id"] in b.index_of] for it in items}


async def catch_up(items: ItemRegistry, registry: Registry) -> int:
    """Encode every registered item into `registry` (a freshly loaded one); returns how many exist.
    A registry outage is logged, not raised: the bundles serve their catalogue meanwhile, and
    the subscriber catches up again when it reconnects."""
    try:
        everything = await items.all()
    except StoreUnavailable as exc:
        log.warning("cannot read registered items: %s", exc)
        return 0
    if everything:
        await ingest(registry, everything)
    return len(everything)


async def follow(items: ItemRegistry, current: Callable[[], Registry]) -> None:
    """Runs for the life of the process: encode every announced item into the bundles served now."""
    async for batch in items.announcements():
        try:
            if batch:
                await ingest(current(), batch)
        except Exception:  # one bad announcement must not stop the subscription
            log.exception("cannot add announced items")


async def swap_in(items: ItemRegistry, registry: Registry, install: Callable[[Registry], None]) -> None:
    """Bring a freshly loaded registry up to date, install it, then add what was announced meanwhile."""
    await catch_up(items, registry)
    install(registry)
    await catch_up(items, registry)
