"""The item registry (app/serving/catalogue.py) on a Redis Cluster.

Every registry key carries the one hash tag `{items}` (`{prefix}{items}`, `{prefix}{items}:vec:...`,
`{prefix}{items}:config`, ...), so they live in one slot: a write and its announcement still go
in one MULTI (or one script), as on a single Redis. Announcements use sharded pub/sub
(SPUBLISH / SSUBSCRIBE, Redis 7) on the channel `{prefix}{items}:new`, in that same slot: the
message travels only within the shard that owns the slot instead of over the whole cluster bus.

A subscriber connects to the master that owns the slot (read from the slot map at each
(re)subscription). When that master dies, or the slot moves (`sunsubscribe` pushed by Redis),
the subscription ends, is made again against the new owner, and the follower catches up with
everything (the resync that follows every subscription), so nothing announced meanwhile is lost.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from app.stores.cluster import ClusterStore
from app.stores.items import RedisItems


class ClusterItems(RedisItems):
    kind = "redis-cluster"

    # SPUBLISH, not PUBLISH: the channel is a key of the registry's slot.
    _PUBLISH = """
    local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
    redis.call('HSET', KEYS[1], 'spec', ARGV[1])
    redis.call('SPUBLISH', ARGV[2], cjson.encode({config = g}))
    return g
    """

    def __init__(self, store: ClusterStore, url: str, prefix: str, timeout: float) -> None:
        super().__init__(store.redis, url, prefix, timeout)  # type: ignore[arg-type]  # same command API
        self.store = store
        base = f"{prefix}{{items}}"
        self.key = base
        self.channel = f"{base}:new"
        self.config_key = f"{base}:config"
        self.workers_key = f"{base}:workers"

    def _vec_key(self, key: str) -> str:
        return f"{self.prefix}{{items}}:vec:{key}"

    def _announce(self, pipe: Any, data: str) -> None:
        pipe.execute_command("SPUBLISH", self.channel, data)

    async def _subscriber(self) -> Redis:
        """A plain connection to the master owning the channel's slot (no read timeout: it idles)."""
        cluster: RedisCluster = self.store.redis
        await cluster.initialize()
        await cluster.nodes_manager.initialize()  # the current owner, not the map of an hour ago
        node = cluster.get_node_from_key(self.channel)
        if node is None:
            raise RedisConnectionError("no master serves the announcement channel's slot")
        return Redis(
            host=node.host,
            port=int(node.port),
            decode_responses=True,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            **self.store.credentials(),
        )

    async def _subscribe(self, pubsub: Any) -> None:
        await pubsub.ssubscribe(self.channel)

    def _data(self, pubsub: Any, msg: dict[str, Any] | None) -> str | None:
        if not pubsub.subscribed:
            # Redis ends a shard subscription (pushes `sunsubscribe`) when its slot moves away.
            raise RedisConnectionError("the announcement channel's slot moved")
        return msg["data"] if msg is not None and msg.get("type") == "smessage" else None
