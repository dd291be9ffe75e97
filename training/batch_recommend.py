"""Batch lists (`seqrec recommend`): every user's top-k from a bundle, into one Parquet file.

    source   a prepared dataset by name (each user's whole sequence, the held-out tail included), a
             snapshot file (`seqrec snapshot`'s Parquet/CSV: user_id, item_id, timestamp), or a Redis
             URL (the users' windows, walked as `seqrec snapshot --source window` walks them and
             decoded by the store's own reader)
    lists    app/serving/batch.py: the service's encoder call, seen-item exclusion, rules (filter,
             SEQREC_RULES, availability from the Redis catalogue) and popularity answer, so each
             list equals what GET /recommend answers for that history
    out      Parquet (user_id, rank, item_id, score), one row group per chunk of users, streamed by
             pyarrow's ParquetWriter under a temporary name and renamed into place at the end

Chunks of users go to `workers` processes (each loads the bundle once), at most two chunks per
worker in flight, so memory stays flat however many users there are; progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from app.serving.batch import (
    BatchLists,
    EventTypes,
    History,
    Limits,
    Lists,
    PortableRules,
    Wanted,
    event_roles,
    excludes_seen,
    open_bundle,
    service_rules,
    stored_histories,
)
from app.settings import Settings
from training.data.readers import DatasetError

SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())])
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


@dataclass(frozen=True)
class BatchResult:
    path: Path
    users: int
    rows: int
    popularity: int  # users answered by popularity (no history the bundle knows)
    seconds: float
    workers: int
    threads: int

    @property
    def users_per_s(self) -> float:
        return self.users / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------- sources
def dataset_histories(name: str, users: set[str] | None = None) -> tuple[int, Iterator[History]]:
    """A prepared dataset's users, each with the whole sequence (the service sees every event)."""
    from training.data.registry import load_dataset

    data = load_dataset(name)
    ids = np.asarray(data.item_ids, dtype=object)
    picked = [u for u, uid in enumerate(data.user_ids) if users is None or uid in users]

    def walk() -> Iterator[History]:
        for u in picked:
            lo, hi = int(data.offsets[u]), int(data.offsets[u + 1])
            items = ids[data.items[lo:hi] - 1].tolist()
            times = None if data.timestamps is None else data.timestamps[lo:hi].astype(np.float64).tolist()
            yield History(data.user_ids[u], items, times)

    return len(picked), walk()


def file_histories(
    path: Path,
    users: set[str] | None = None,
    types: EventTypes | None = None,
    max_history: int | None = None,
    max_excluded: int = 1000,
) -> tuple[int, Iterator[History]]:
    """A snapshot file: events grouped by user, ordered by time (ties keep the file's order, which is
    the store's order in a window snapshot), read as the store reads a window.

    `types`: the deployment's event types (default: the service's defaults). A row's `type` (no
    column, or an empty value: the default type) decides, as when the store wrote the event, whether
    it is history (not a negative type) and whether its item joins the user's exclusion set (a
    negative type, or one of SEQREC_EXCLUDE_TYPES): the last `max_excluded` such items by their
    newest time, from every row of the user. `max_history`: each history is the user's last that
    many events, negative ones included, as the store's window keeps them; the negative ones are
    then left out, as the store's read leaves them out."""
    types = types or event_roles(None)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".parquet"):
        frame = pl.scan_parquet(path)
    elif suffixes.endswith((".csv", ".csv.gz")):
        strings = {"user_id": pl.String, "item_id": pl.String, "type": pl.String}
        frame = pl.scan_csv(path, schema_overrides=strings)
    else:
        raise DatasetError(f"{path}: a snapshot is a .parquet or .csv file")
    names = frame.collect_schema().names()
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in names]
    if missing:
        raise DatasetError(
            f"{path}: no column {', '.join(missing)} (a `seqrec snapshot` file has user_id, item_id, timestamp)"
        )
    kind = pl.col("type").cast(pl.String).fill_null(types.default) if "type" in names else pl.lit(types.default)
    frame = frame.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.col("timestamp").cast(pl.Float64),
        kind.alias("type"),
    )
    if users is not None:
        frame = frame.filter(pl.col("user_id").is_in(list(users)))
    events = frame.with_row_index("_n").sort(["user_id", "timestamp", "_n"]).collect()
    unknown = sorted(set(events["type"].unique().to_list()) - set(types.names))
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DatasetError(
            f"{path}: event type(s) {shown} not among SEQREC_EVENT_TYPES ({', '.join(types.names)}): the service"
            " would have refused them; set the deployment's event types"
        )
    kept = ~pl.col("type").is_in(sorted(types.negative))
    if max_history is not None:  # the window: the user's last max_history events, of every type
        newest_first = pl.int_range(pl.len(), 0, -1, dtype=pl.Int64).over("user_id")  # n, n - 1, ..., 1
        kept &= newest_first <= max_history
    grouped = (
        events.with_columns(kept.alias("_kept"))
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").filter(pl.col("_kept")), pl.col("timestamp").filter(pl.col("_kept")))
    )
    excluding = sorted(t for t in types.names if types.excluding(t))
    away = (
        events.filter(pl.col("type").is_in(excluding))
        .group_by("user_id", "item_id")
        .agg(pl.col("timestamp").max())  # an item excluded again keeps its newest time
        .sort("user_id", "timestamp", "item_id")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").tail(max_excluded).alias("excluded"))
    )
    if away.height:
        grouped = grouped.join(away, on="user_id", how="left", maintain_order="left")
    else:
        grouped = grouped.with_columns(pl.lit(None, pl.List(pl.String)).alias("excluded"))

    def walk() -> Iterator[History]:
        for user, items, times, excluded in grouped.iter_rows():
            yield History(user, items, times, excluded or ())

    return grouped.height, walk()


def redis_histories(
    settings: Settings, with_times: bool, users: set[str] | None = None
) -> tuple[int | None, Iterator[History]]:
    """The users the store holds a window for (`{prefix}h:{user}`, walked with SCAN on every primary),
    or those named, each read with the store's own `read`: the window and the exclusion set."""
    from training.snapshot import _glob_escape, cluster_user, connect, masters

    assert settings.redis_url is not None
    client = connect(settings.redis_url)
    user_of = cluster_user if hasattr(client, "get_primaries") else (lambda k: k)
    key_prefix = f"{settings.key_prefix}h:"

    def pages() -> Iterator[list[str]]:
        if users is not None:
            named = sorted(users)
            yield from (named[s : s + 1000] for s in range(0, len(named), 1000))
            return
        for node in masters(client):
            seen: set[str] = set()
            cursor = 0
            while True:  # SCAN may return a key twice: each user once per node
                cursor, keys = node.scan(cursor=cursor, match=_glob_escape(key_prefix) + "*", count=1000)
                page = [user_of(k.decode()[len(key_prefix) :]) for k in keys]
                page = [u for u in page if u not in seen]
                seen.update(page)
                if page:
                    yield page
                if int(cursor) == 0:
                    break

    def walk() -> Iterator[History]:
        try:
            for page in pages():
                for h in asyncio.run(stored_histories(settings, page, with_times)):
                    if h.items or h.excluded or users is not None:
                        yield h
        finally:
            client.close()

    return (len(users) if users is not None else None), walk()


def open_source(
    source: str, users: set[str] | None = None, settings: Settings | None = None, with_times: bool = False
) -> tuple[int | None, Iterator[History]]:
    """`source`: a Redis URL (read with `settings`' key prefix and max_history; `with_times` for a
    bundle that reads event times), a snapshot file (.parquet / .csv: typed rows read with `settings`'
    event types, each user's window cut to its max_history), or a prepared dataset's name."""
    if source.startswith(REDIS_SCHEMES):
        if settings is None:
            raise DatasetError("a Redis source is read with the service's settings (key prefix, max_history)")
        return redis_histories(settings.model_copy(update={"redis_url": source}), with_times, users)
    path = Path(source)
    if path.suffix.lower() in (".parquet", ".csv", ".gz"):
        if not path.is_file():
            raise DatasetError(f"{path}: no such snapshot file")
        roles = event_roles(settings)
        if settings is None:
            return file_histories(path, users, roles)
        return file_histories(path, users, roles, settings.max_history, settings.max_excluded)
    return dataset_histories(source, users)


# ---------------------------------------------------------------------------------- workers
_worker: BatchLists | None = None


@dataclass(frozen=True)
class _Job:
    bundle: str
    k: int
    rules: PortableRules
    exclude_seen: bool
    max_history: int
    limits: Limits
    batch_size: int
    threads: int
    ann_threshold: int
    excludes_seen: bool = True

    def lists(self) -> BatchLists:
        bundle = open_bundle(self.bundle, self.ann_threshold)
        return BatchLists(
            bundle,
            self.k,
            self.rules.rules(),
            self.exclude_seen,
            self.max_history,
            self.limits,
            self.batch_size,
            self.threads,
            self.excludes_seen,
        )


def _init(job: _Job) -> None:
    global _worker
    _worker = job.lists()


def _run(chunk: list[History]) -> Lists:
    assert _worker is not None
    return _worker.lists(chunk)


def _chunks(histories: Iterator[History], size: int) -> Iterator[list[History]]:
    chunk: list[History] = []
    for h in histories:
        chunk.append(h)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _window(chunk: list[History], n: int) -> list[History]:
    """Each history cut to the last `n` events before it is sent to a worker (which reads no more):
    a whole dataset sequence is not pickled for the few events the store would keep."""
    return [
        h if len(h.items) <= n else replace(h, items=h.items[-n:], times=None if h.times is None else h.times[-n:])
        for h in chunk
    ]


def _table(got: Lists, items: pa.Array) -> pa.Table:
    """A chunk's lists as Parquet rows: `items` maps label l to its id (row l - 1); the strings are
    taken in Arrow, never built one by one in Python."""
    counts = got.counts
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(got.labels), dtype=np.int64) - np.repeat(starts, counts) + 1
    who = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return pa.table(
        {
            "user_id": pa.array(got.user_id, pa.string()).take(pa.array(who)),
            "rank": pa.array(rank.astype(np.int32), pa.int32()),
            "item_id": items.take(pa.array(got.labels - 1)),
            "score": pa.array(got.score, pa.float32()),
        },
        schema=SCHEMA,
    )


class Progress:
    """Users done, users/s and the time left, on one stderr line at most every `every_s` seconds."""

    def __init__(self, total: int | None, stream: TextIO | None = sys.stderr, every_s: float = 1.0) -> None:
        self.total, self.stream, self.every_s = total, stream, every_s
        self.start = self.last = time.perf_counter()
        self.done = 0

    def add(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if self.stream is None or (not final and now - self.last < self.every_s):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        line = f"users {self.done:,}"
        if self.total:
            line += f"/{self.total:,} ({100 * self.done / self.total:.1f}%)"
        line += f", {rate:,.0f} users/s"
        if self.total and not final and rate > 0:
            line += f", ETA {_clock((self.total - self.done) / rate)}"
        print(line, file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------------------------- the run
def recommend_batch(
    bundle: Path | str,
    source: str | Sequence[History],
    out: Path,
    k: int = 10,
    filter: str | None = None,
    include_unavailable: bool = False,
    rule: str | None = None,
    exclude_seen: bool = True,
    users: Sequence[str] | None = None,
    workers: int = 0,
    threads: int = 1,
    chunk: int = 4096,
    batch_size: int = 32,
    settings: Settings | None = None,
    progress: TextIO | None = sys.stderr,
) -> BatchResult:
    """Top-k for every user of `source` (see `open_source`; or histories already read), or of those in
    `users`, into `out` (Parquet). The catalogue, the deployment's rules, max_history, the filter
    limits and the key prefix come from `settings` (default: the SEQREC_* environment, as the service
    reads it, with `bundle` as its bundle). `workers` 0: one per core; `threads`: ONNX Runtime
    intra-op threads per worker."""
    settings = settings or Settings(bundles=[Path(bundle)])
    if isinstance(source, str) and source.startswith(REDIS_SCHEMES) and not settings.redis_url:
        settings = settings.model_copy(update={"redis_url": source})  # the catalogue lives next to the windows
    if not 1 <= k <= settings.max_k:
        raise DatasetError(f"k must be between 1 and {settings.max_k}")
    t0 = time.perf_counter()
    probe = open_bundle(bundle, settings.ann_threshold)
    wanted = Wanted(filter=filter, include_unavailable=include_unavailable, rule=rule)
    rules, limits = asyncio.run(service_rules(probe, settings, wanted))
    job = _Job(
        str(bundle),
        k,
        PortableRules.of(rules),
        exclude_seen,
        settings.max_history,
        limits,
        batch_size,
        threads,
        settings.ann_threshold,
        excludes_seen(settings),
    )
    if isinstance(source, str):
        wanted_users = set(users) if users is not None else None
        total, histories = open_source(source, wanted_users, settings, probe.needs_times)
    else:  # histories already read (a benchmark, a caller with its own reader)
        total, histories = len(source), iter(source)
    workers = workers or os.cpu_count() or 1
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    meter = Progress(total, progress)
    rows = popularity = 0
    items = pa.array(probe.item_ids, pa.string())
    try:
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for got in _results(job, histories, chunk, workers, probe):
                writer.write_table(_table(got, items))
                rows += got.rows
                popularity += got.popularity
                meter.add(got.users)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    meter.add(0, final=True)
    return BatchResult(out, meter.done, rows, popularity, time.perf_counter() - t0, workers, threads)


def _results(job: _Job, histories: Iterator[History], size: int, workers: int, probe: Any) -> Iterator[Lists]:
    """Each chunk's lists, in order: in this process for one worker, else over a process pool with
    at most two chunks per worker queued (the input is read as fast as it is consumed)."""
    chunks = _chunks(histories, size)
    if workers == 1:
        local = BatchLists(
            probe,
            job.k,
            job.rules.rules(),
            job.exclude_seen,
            job.max_history,
            job.limits,
            job.batch_size,
            job.threads,
            job.excludes_seen,
        )
        yield from map(local.lists, chunks)
        return
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked ONNX Runtime threads
    with ctx.Pool(workers, initializer=_init, initargs=(job,)) as pool:
        pending: deque[Any] = deque()
        submit: Callable[[list[History]], Any] = lambda c: pool.apply_async(_run, (c,))  # noqa: E731
        for c in map(partial(_window, n=job.max_history), chunks):
            pending.append(submit(c))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
