"""Export of the live event store -> one Parquet (or CSV) file: the event log, or the users' windows.

The event log (`snapshot_log`, the default of `seqrec snapshot`): every event the service stored,
kept for SEQREC_EVENT_LOG_RETENTION_S apart from the windows serving reads (app/stores/eventlog.py
has the layout: one Redis Stream `{prefix}log`, or on a Redis Cluster one `{prefix}log:{<tag>}` per
hash slot; entry fields `u` user, `m` event id US item id, `t` event time, `y` the event type when it
is not the deployment's default). A time range selects by
arrival (the stream ids), and a checkpoint file of the last ids exported lets the next run continue
exactly there: consecutive runs neither miss nor repeat an event, late events included.

The windows (`snapshot`, `--source window`): the service keeps one sorted set per user,
`{prefix}h:{user_id}`, member `event_id \\x1f item_id` (a typed event: `event_id \\x1c type \\x1f
item_id`, `\\x1b` for a negative type; app/stores/base.py), score = event time (app/stores/redis.py).
A snapshot walks the keys with SCAN and reads each user's set with one ZRANGE in a pipeline, so
one user's history is read in one command (a consistent view of that user).

Event types: when any exported event has a type, the output has a `type` column, where an event
stored without one gets `default_type` (the service's SEQREC_DEFAULT_EVENT_TYPE, `view` unless set:
the store keeps default-type events untyped), so every row names its type, as `seqrec prepare
--type-col type` requires. Without any typed event the output has exactly the four columns it had
before types existed.

Both keep memory bounded: rows are spooled to Parquet parts of `chunk_rows` rows and streamed
into the output by polars at the end. The output is written under a temporary name and renamed
into place, so a failed snapshot never leaves a partial file.

Redis Cluster: SCAN only walks the node it is sent to, so `masters()` returns one client per
primary of a `redis.cluster.RedisCluster` (the keys of a single user live on one node); a plain
client is its own only master.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

SEP = b"\x1f"  # the store's member separator (ids may not contain control characters)
TYPE_MARKS = (b"\x1c", b"\x1b")  # before a typed member's type: a type, a negative type (app/stores/base.py)
SCHEMA = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "event_id": pl.String}
TYPED_SCHEMA = {**SCHEMA, "type": pl.String}  # spooled; `type` is dropped when no event had one
LOG_STREAM = "log"  # the log's key after the prefix (app/stores/eventlog.py: STREAM)
MAX_SEQ = 2**64 - 1  # the largest sequence number of a stream id


class SnapshotError(RuntimeError):
    """Redis unreachable or lost during the snapshot; no output file was written."""


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    users: int
    events: int
    seconds: float
    streams: int = 0  # log streams read (the log export)
    warnings: tuple[str, ...] = ()  # what the caller should know (events trimmed before export, an empty log)


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
    """Buffers rows and flushes them as Parquet parts every `chunk_rows`."""

    def __init__(self, tmpdir: Path, chunk_rows: int) -> None:
        self.tmpdir, self.chunk_rows = tmpdir, chunk_rows
        self.cols: dict[str, list[Any]] = {c: [] for c in TYPED_SCHEMA}
        self.parts: list[Path] = []
        self.rows = 0
        self.typed = False  # some event had a type: the output keeps the `type` column

    def add_entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Log stream entries: fields u (user), m (event id US item id), t (event time), y (type, if any)."""
        c = self.cols
        for _, f in entries:
            event_id, item_id = f[b"m"].rsplit(SEP, 1)
            c["user_id"].append(f[b"u"].decode())
            c["item_id"].append(item_id.decode())
            c["timestamp"].append(float(f[b"t"]))
            c["event_id"].append(event_id.decode())
            y = f.get(b"y")
            c["type"].append(None if y is None else y.decode())
            self.typed = self.typed or y is not None
        self.rows += len(entries)
        if len(c["user_id"]) >= self.chunk_rows:
            self.flush()

    def add(self, user: str, members: list[tuple[bytes, float]]) -> None:
        c = self.cols
        for m, score in members:
            event_id, item_id = m.rsplit(SEP, 1)
            type_ = None
            for mark in TYPE_MARKS:
                if mark in event_id:
                    event_id, raw_type = event_id.split(mark, 1)
                    type_, self.typed = raw_type.decode(), True
            c["user_id"].append(user)
            c["item_id"].append(item_id.decode())
            c["timestamp"].append(float(score))
            c["event_id"].append(event_id.decode())
            c["type"].append(type_)
        self.rows += len(members)
        if len(c["user_id"]) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Spool the buffered rows as one Parquet part (a CSV output is written from the parts at the
        end, once it is known whether the `type` column stays)."""
        if not self.cols["user_id"]:
            return
        part = self.tmpdir / f"part-{len(self.parts):06d}.parquet"
        pl.DataFrame(self.cols, schema=TYPED_SCHEMA).write_parquet(part)
        self.parts.append(part)
        self.cols = {c: [] for c in TYPED_SCHEMA}


@contextlib.contextmanager
def _output(out: Path, chunk_rows: int, default_type: str = "view") -> Iterator[_Spool]:
    """A spool whose rows become `out` when the block ends without an error, and nothing otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    is_csv = out.suffix.lower() == ".csv"
    spool = _Spool(tmpdir, chunk_rows)
    try:
        yield spool
        spool.flush()
        final = tmpdir / "out.csv" if is_csv else tmpdir / "out.parquet"
        schema = TYPED_SCHEMA if spool.typed else SCHEMA
        # Streamed: the parts are never all in memory at once.
        rows = pl.scan_parquet(spool.parts).select(list(schema)) if spool.parts else pl.LazyFrame(schema=schema)
        if spool.typed:
            rows = rows.with_columns(pl.col("type").fill_null(default_type))
        if is_csv:
            rows.sink_csv(final)
        else:
            rows.sink_parquet(final)
        os.replace(final, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _lost(exc: BaseException) -> SnapshotError:
    return SnapshotError(f"redis failed during the snapshot ({type(exc).__name__}: {exc}); no file written")


def snapshot(
    client: Any,
    out: Path,
    prefix: str = "seqrec:",
    chunk_rows: int = 250_000,
    scan_count: int = 1000,
    progress: bool | None = None,
    user_of: Callable[[str], str] | None = None,
    default_type: str = "view",
) -> SnapshotResult:
    """Write every history under `prefix` to `out` (Parquet; CSV when the name ends in .csv).
    `default_type`: the `type` of events stored without one, when any event has a type.

    `client` is a sync redis-py client created with decode_responses=False (or a RedisCluster).
    Raises SnapshotError when Redis fails; `out` is then left as it was."""
    t0 = time.perf_counter()
    out = Path(out)
    users = 0
    with _output(out, chunk_rows, default_type) as spool:
        bar = tqdm(desc="snapshot", unit=" users", disable=not progress if progress is not None else None)
        try:
            if user_of is None and hasattr(client, "get_primaries"):
                user_of = cluster_user  # the cluster store hash-tags every user's keys
            for user, members in iter_histories(masters(client), prefix, scan_count, user_of):
                spool.add(user, members)
                users += 1
                bar.update(1)
        except _redis_errors() as exc:
            raise _lost(exc) from exc
        finally:
            bar.close()
    return SnapshotResult(out, users, spool.rows, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- the log
StreamId = tuple[int, int]  # (arrival ms, sequence number)


def parse_time(text: str) -> float:
    """`--since` / `--until`: epoch seconds, or ISO-8601 (a time without an offset is UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        example = "e.g. 2026-12-01T00:00:00Z"
        raise SnapshotError(f"{text!r} is neither epoch seconds nor an ISO-8601 time ({example})") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _sid(raw: bytes | str) -> StreamId:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


def _text_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def _after(sid: StreamId) -> StreamId:
    return (sid[0], sid[1] + 1) if sid[1] < MAX_SEQ else (sid[0] + 1, 0)


@dataclass
class Checkpoint:
    """The last stream id exported from each log stream: the next run starts after it.

    A JSON file, replaced atomically, and only after the export's file is in place: a run that
    fails leaves it as it was, so the rerun exports the same events again."""

    path: Path
    prefix: str
    streams: dict[str, str]

    @classmethod
    def load(cls, path: Path, prefix: str) -> Checkpoint:
        if not path.exists():
            return cls(path, prefix, {})
        try:
            data = json.loads(path.read_text())
            streams = {str(k): str(v) for k, v in data["streams"].items()}
            for v in streams.values():
                _sid(v)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"{path} is not a snapshot checkpoint ({type(exc).__name__}: {exc})") from exc
        if data.get("prefix") != prefix:
            raise SnapshotError(
                f"{path} continues the log of prefix {data.get('prefix')!r}, not {prefix!r}: "
                "use another checkpoint file"
            )
        return cls(path, prefix, streams)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"prefix": self.prefix, "streams": dict(sorted(self.streams.items()))}, indent=1))
        os.replace(tmp, self.path)


def log_streams(client: Any, prefix: str, scan_count: int = 1000) -> list[tuple[Any, str]]:
    """(node client, stream name) of every log stream: `{prefix}log` on one Redis; on a cluster every
    `{prefix}log:{<tag>}` each primary holds (a stream per hash slot)."""
    if not hasattr(client, "get_primaries"):
        name = prefix + LOG_STREAM
        return [(client, name)] if client.type(name) == b"stream" else []
    found = []
    pattern = _glob_escape(prefix) + LOG_STREAM + ":*"
    for node in masters(client):
        names = {k for k in node.scan_iter(match=pattern, count=scan_count, _type="stream")}
        found += [(node, k.decode()) for k in sorted(names)]
    return found


def _has_histories(client: Any, prefix: str) -> bool:
    pattern = _glob_escape(prefix) + "h:*"
    return any(next(iter(node.scan_iter(match=pattern, count=1000)), None) is not None for node in masters(client))


def snapshot_log(
    client: Any,
    out: Path,
    prefix: str = "seqrec:",
    since: float | None = None,
    until: float | None = None,
    checkpoint: Path | None = None,
    chunk_rows: int = 250_000,
    count: int = 10_000,
    progress: bool | None = None,
    default_type: str = "view",
) -> SnapshotResult:
    """Write the event log's events that arrived in [since, until) to `out` (Parquet; CSV when the
    name ends in .csv), each stream in arrival order; `default_type` as in `snapshot`.

    Arrival is the stream id (the ms Redis logged the event), not the event's own time: an event
    sent late is in the range it arrived in, so consecutive ranges cover the log once. Without
    `until`, each stream is read up to its last entry when the export reaches it. With
    `checkpoint`, each stream starts after the id the file holds for it (and after `since`), and
    the file is updated once `out` is in place. Raises SnapshotError when Redis fails; `out` and
    the checkpoint are then left as they were."""
    t0 = time.perf_counter()
    out = Path(out)
    ckpt = Checkpoint.load(Path(checkpoint), prefix) if checkpoint is not None else None
    low = (math.ceil(since * 1000), 0) if since is not None else (0, 0)
    high = (math.ceil(until * 1000) - 1, MAX_SEQ) if until is not None else None
    users: set[str] = set()
    warnings: list[str] = []
    moved: dict[str, str] = {}
    with _output(out, chunk_rows, default_type) as spool:
        bar = tqdm(desc="snapshot", unit=" events", disable=not progress if progress is not None else None)
        try:
            streams = log_streams(client, prefix)
            logged = 0  # streams holding any entry
            for node, name in streams:
                info = node.xinfo_stream(name)
                last = info.get("last-entry")
                if not last:
                    continue
                logged += 1
                start = low
                done = ckpt.streams.get(name) if ckpt is not None else None
                if done is not None:
                    start = max(start, _after(_sid(done)))
                end = _sid(last[0]) if high is None else min(_sid(last[0]), high)
                deleted = _sid(info.get("max-deleted-entry-id") or "0-0")
                if (done is not None or since is not None) and deleted >= start:
                    warnings.append(
                        f"{name}: events logged after {_text_id(start)} were trimmed (up to {_text_id(deleted)}) "
                        f"before this export: SEQREC_EVENT_LOG_RETENTION_S is shorter than the gap between exports"
                    )
                if start <= end:
                    n = _read_range(node, name, start, end, count, spool, users)
                    bar.update(n)
                if ckpt is not None and (done is None or end > _sid(done)):
                    moved[name] = _text_id(end)
            if not logged and _has_histories(client, prefix):
                warnings.append(
                    f"there is no event log under {prefix!r}, but user histories exist: `--source window`"
                    " exports those (SEQREC_EVENT_LOG was off, or they were stored before the log existed)"
                )
        except _redis_errors() as exc:
            raise _lost(exc) from exc
        finally:
            bar.close()
    if ckpt is not None:
        ckpt.streams.update(moved)
        ckpt.save()
    return SnapshotResult(out, len(users), spool.rows, time.perf_counter() - t0, len(streams), tuple(warnings))


def _read_range(
    node: Any, name: str, start: StreamId, end: StreamId, count: int, spool: _Spool, users: set[str]
) -> int:
    """Spool the entries of one stream from `start` to `end` (both inclusive), `count` per round trip."""
    lo, n = _text_id(start), 0
    while True:
        entries = node.xrange(name, min=lo, max=_text_id(end), count=count)
        spool.add_entries(entries)
        users.update(f[b"u"].decode() for _, f in entries)
        n += len(entries)
        if len(entries) < count:
            return n
        lo = "(" + (entries[-1][0].decode())


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
