"""Copy every user's history from one event store to another: one Redis -> a Redis Cluster, or back.

    python -m app.stores.migrate --from redis://old:6379/0 --to redis+cluster://n1:6379,n2:6379
    python -m app.stores.migrate --from redis+cluster://n1:6379 --to redis://new:6379/0

The source is read with SCAN on every master (one Redis is its own only master) and one ZRANGE per
user. The target is written through its store's append, the atomic script the API uses, so each
event keeps its id and time. Running the copy twice, or while the API already writes to the
target, stores nothing twice. The target's max history and TTL apply: a copied history expires
`--ttl-s` after the copy, not when it would have expired in the source.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from app.stores import ClusterStore, Event, EventStore, RedisStore, StoreUnavailable, is_cluster_url
from app.stores.base import SEP

BATCH = 1000


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def open_store(url: str, prefix: str, max_history: int, ttl_s: int) -> EventStore:
    if is_cluster_url(url):
        return ClusterStore(url, max_history, ttl_s, prefix=prefix, read_timeout=5.0, write_timeout=10.0)
    return RedisStore(url, max_history, ttl_s, prefix=prefix, read_timeout=5.0, write_timeout=10.0)


async def histories(url: str, prefix: str) -> AsyncIterator[tuple[str, list[tuple[bytes, float]]]]:
    """(user, [(member, time), ...]) for every history in the store at `url`."""
    pattern = _glob_escape(prefix) + "h:*"
    cluster = None
    if is_cluster_url(url):
        cluster = ClusterStore(url, 1, 1, prefix=prefix, read_timeout=5.0)
        clients = await cluster.master_clients()
    else:
        clients = [Redis.from_url(url, decode_responses=False, socket_timeout=10)]
    try:
        for client in clients:
            seen: set[bytes | str] = set()  # SCAN may return a key twice
            cursor = 0
            while True:
                cursor, keys = await client.scan(cursor=cursor, match=pattern, count=BATCH)
                keys = [k for k in keys if k not in seen]
                seen.update(keys)
                pipe = client.pipeline(transaction=False)
                for k in keys:
                    pipe.zrange(k, 0, -1, withscores=True)
                for k, members in zip(keys, await pipe.execute(), strict=True):
                    key = k.decode() if isinstance(k, bytes) else k
                    user = cluster.user_of_key(key) if cluster else key[len(prefix) + 2 :]
                    if members:  # expired between SCAN and ZRANGE
                        yield user, members
                if int(cursor) == 0:
                    break
    finally:
        if cluster is not None:
            await cluster.close()
        else:
            await clients[0].aclose()


async def migrate(src: str, dst: str, prefix: str, max_history: int, ttl_s: int) -> dict[str, int]:
    target = open_store(dst, prefix, max_history, ttl_s)
    users = events = accepted = 0
    batch: list[Event] = []

    async def flush() -> None:
        nonlocal accepted
        for attempt in range(5):  # a failover in the target: resend (idempotent)
            try:
                accepted += (await target.append(batch)).accepted
                break
            except StoreUnavailable:
                if attempt == 4:
                    raise
                await asyncio.sleep(1.0)
        batch.clear()

    try:
        async for user, members in histories(src, prefix):
            users += 1
            for m, ts in members:
                event_id, item_id = m.decode().rsplit(SEP, 1)
                batch.append(Event(user, item_id, float(ts), event_id))
            events += len(members)
            if len(batch) >= BATCH:
                await flush()
        if batch:
            await flush()
    finally:
        await target.close()
    return {"users": users, "events": events, "accepted": accepted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="redis://... or redis+cluster://...")
    ap.add_argument("--to", dest="dst", required=True, help="redis://... or redis+cluster://...")
    ap.add_argument("--prefix", default="seqrec:", help="SEQREC_KEY_PREFIX of both")
    ap.add_argument("--max-history", type=int, default=200, help="SEQREC_MAX_HISTORY of the target")
    ap.add_argument("--ttl-s", type=int, default=30 * 86400, help="SEQREC_HISTORY_TTL_S of the target")
    args = ap.parse_args()
    print(asyncio.run(migrate(args.src, args.dst, args.prefix, args.max_history, args.ttl_s)))


if __name__ == "__main__":
    main()
