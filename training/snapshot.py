"""Snapshot of the live event store: every user's history in Redis -> one Parquet (or CSV) file.

The service keeps one sorted set per user, `{prefix}h:{user_id}`, member `event_id \\x1f item_id`,
score = event time (app/stores/redis.py). A snapshot walks the keys with SCAN and reads each
user's set with one ZRANGE in a pipeline, so one user's history is read in one command (a
consistent view of that user) while memory stays bounded: rows are spooled to Parquet parts of
`chunk_rows` rows and streamed into the output by polars at the end. The output is written under
a temporary name and renamed into place, so a failed snapshot never leaves a partial file.

Redis Cluster: SCAN only walks the node it is sent to, so `masters()` returns one client per
primary of a `redis.cluster.RedisCluster` (the keys of a single user live on one node); a plain
client is its own only master.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

SEP = b"\x1f"  # the store's member separator (ids may not contain control characters)
SCHEMA = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "event_id": pl.String}


class SnapshotError(RuntimeError):
    """Redis unreachable or lost during the snapshot; no output file was written."""


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    users: int
    events: int
    seconds: float


def _glob_escape(s: str) -> str:
    """SCAN MATCH is a glob: a prefix containing * ? [ ] or \\ must match itself only."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def masters(client: Any) -> list[Any]:
    """The clients to SCAN: every primary of a cluster client, else the client itself."""
    if hasattr(client, "get_primaries"):  # redis.cluster.RedisCluster
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError)


def iter_histories(
    clients: Sequence[Any],
    prefix: str = "seqrec:",
    scan_count: int = 1000,
    user_of: Callable[[str], str] | None = None,
) -> Iterator[tuple[str, list[tuple[bytes, float]]]]:
    """(user_id, [(member, score), ...] oldest first) for every history key of every client.

    `user_of` maps the key's part after `{prefix}h:` to the user id (default: it is the id; a
    store that hash-tags its keys passes its own). SCAN may return a key twice (keys rehashed
    during the walk): each user is yielded once per client."""
    key_prefix = f"{prefix}h:".encode()
    decode = user_of or (lambda s: s)
    pattern = _glob_escape(prefix) + "h:*"
    for client in clients:
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor=cursor, match=pattern, count=scan_count)
            keys = [k for k in keys if k not in seen]
            seen.update(keys)
            if keys:
                pipe = client.pipeline(transaction=False)
                for k in keys:
                    pipe.zrange(k, 0, -1, withscores=True)
                for k, members in zip(keys, pipe.execute(), strict=True):
                    if members:  # expired between SCAN and ZRANGE: nothing to write
                        yield decode(k[len(key_prefix) :].decode()), members
            if int(cursor) == 0:
                break


class _Spool:
    """Buffers rows and flushes them as Parquet parts (or appends to one CSV) every `chunk_rows`."""

    def __init__(self, tmpdir: Path, csv_path: Path | None, chunk_rows: int) -> None:
        self.tmpdir, self.csv_path, self.chunk_rows = tmpdir, csv_path, chunk_rows
        self.cols: dict[str, list[Any]] = {c: [] for c in SCHEMA}
        self.parts: list[Path] = []
        self.rows = 0

    def add(self, user: str, members: list[tuple[bytes, float]]) -> None:
        c = self.cols
        for m, score in members:
            event_id, item_id = m.rsplit(SEP, 1)
            c["user_id"].append(user)
            c["item_id"].append(item_id.decode())
            c["timestamp"].append(float(score))
            c["event_id"].append(event_id.decode())
        self.rows += len(members)
        if len(c["user_id"]) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.cols["user_id"] and (self.parts or self.csv_path is not None):
            return
        df = pl.DataFrame(self.cols, schema=SCHEMA)
        if self.csv_path is not None:
            with self.csv_path.open("ab") as fh:
                df.write_csv(fh, include_header=fh.tell() == 0)
        else:
            part = self.tmpdir / f"part-{len(self.parts):06d}.parquet"
            df.write_parquet(part)
            self.parts.append(part)
        self.cols = {c: [] for c in SCHEMA}


def snapshot(
    client: Any,
    out: Path,
    prefix: str = "seqrec:",
    chunk_rows: int = 250_000,
    scan_count: int = 1000,
    progress: bool | None = None,
    user_of: Callable[[str], str] | None = None,
) -> SnapshotResult:
    """Write every history under `prefix` to `out` (Parquet; CSV when the name ends in .csv).

    `client` is a sync redis-py client created with decode_responses=False (or a RedisCluster).
    Raises SnapshotError when Redis fails; `out` is then left as it was."""
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    is_csv = out.suffix.lower() == ".csv"
    spool = _Spool(tmpdir, tmpdir / "out.csv" if is_csv else None, chunk_rows)
    users = 0
    try:
        bar = tqdm(desc="snapshot", unit=" users", disable=not progress if progress is not None else None)
        try:
            if user_of is None and hasattr(client, "get_primaries"):
                user_of = cluster_user  # the cluster store hash-tags every user's keys
            for user, members in iter_histories(masters(client), prefix, scan_count, user_of):
                spool.add(user, members)
                users += 1
                bar.update(1)
        except _redis_errors() as exc:
            raise SnapshotError(
                f"redis failed during the snapshot ({type(exc).__name__}: {exc}); no file written"
            ) from exc
        finally:
            bar.close()
        spool.flush()
        final = tmpdir / "out.csv" if is_csv else tmpdir / "out.parquet"
        if not is_csv:
            # Streamed: the parts are never all in memory at once.
            pl.scan_parquet(spool.parts).sink_parquet(final)
        elif not final.exists():
            pl.DataFrame(schema=SCHEMA).write_csv(final)
        os.replace(final, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return SnapshotResult(out, users, spool.rows, time.perf_counter() - t0)


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def cluster_user(tagged: str) -> str:
    """The user id inside a cluster key's hash tag `{id}` (the service writes `%` as %25 and `}` as %7D
    there, so the tag is the whole id); tests/live checks this against the service's own store."""
    if not (tagged.startswith("{") and tagged.endswith("}")):
        raise SnapshotError(f"history key part {tagged!r} is not a hash tag: is this a Redis Cluster store?")
    return tagged[1:-1].replace("%7D", "}").replace("%25", "%")


def _cluster_client(url: str, socket_timeout: float) -> Any:
    """`redis+cluster://[user:pass@]host:port[,host:port...]` -> a sync RedisCluster."""
    from urllib.parse import unquote, urlsplit

    from redis.cluster import ClusterNode, RedisCluster

    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    user, _, password = auth.partition(":")
    nodes = []
    for hp in hosts.split(","):
        host, _, port = hp.strip().rpartition(":")
        nodes.append(ClusterNode(host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(user) or None,
        password=unquote(password) or None,
        ssl=parts.scheme.startswith("rediss"),
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
    )


def connect(url: str, socket_timeout: float = 5.0) -> Any:
    """A sync client for `url` that fails fast: unreachable -> SnapshotError, not a long hang.

    A `redis+cluster://host:port,...` URL gives a cluster client: `snapshot` then scans every primary
    and reads user ids out of the keys' hash tags, as the service's cluster store writes them."""
    import redis
    from redis.exceptions import RedisClusterException

    try:
        if url.split("://", 1)[0] in CLUSTER_SCHEMES:
            client = _cluster_client(url, socket_timeout)
        else:
            client = redis.Redis.from_url(
                url, decode_responses=False, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        client.ping()
    except (*_redis_errors(), RedisClusterException, ValueError) as exc:
        raise SnapshotError(f"cannot reach redis at {_safe_url(url)}: {type(exc).__name__}: {exc}") from exc
    return client


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]  # host:port, or a cluster's comma-separated list
    return f"{parts.scheme}://{hosts}{parts.path}"
