"""`seqrec backfill`: load an offline history into the live event store before going live.

The rows are read by `seqrec prepare`'s reader (training/data/files.py: the same columns, time
formats and id rule) and written through the service's own store classes (app/stores), with the
same append script as POST /events: a user's window ends up exactly as if the events had been
posted, in any order and in any batches (the window keeps the last SEQREC_MAX_HISTORY events by
time; an event is its event id and item, so a repeat changes nothing).

- Event ids: the file's event id column when it has one; else the id POST /events gives an
  event sent without one, `t<time with 6 decimals>` (the event time identifies the event). Both
  are derived from the row alone, so a rerun writes the same members and adds nothing.
- Order: the rows are sorted by user, time, event id and item, a function of the files' content
  alone. A batch holds whole users (at least `batch` rows, or the rest), one script call each, so
  `accepted` counts exactly the events the windows keep and `too_old` the ones older than that.
- Resumable: after each batch the number of rows done and the counts so far are written to
  `{prefix}backfill:<digest of the files and reading options>` in the same Redis, so the
  checkpoint lives and dies with the data it describes (a flushed Redis starts over). A rerun
  with `resume` starts after the last batch the checkpoint holds; the batch in flight when a run
  stopped is sent again, and its events stored before the stop count as duplicates then.
- The event log: off by default. The offline file is already the training record, and the
  retrain reads it beside the snapshots (`seqrec prepare --file offline.csv --file
  events.parquet`); logging the history again would cost the log's memory (~76 MB per million
  events, docs/live-loop.md section 6) for events prepare drops anyway (by event id when both
  files have ids, else by user, item and time). `log=True` logs them as POST /events would
  (the replay index included), e.g. when the file will not be kept.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.ids import valid_id
from app.settings import Settings
from app.stores import ClusterStore, Event, RedisStore, StoreUnavailable, is_cluster_url
from app.stores.eventlog import EventLog
from training.data.files import FileOptions, file_digest, read_one
from training.data.readers import DatasetError

# The API's bound on event times (app/api/schemas.py, MAX_TIMESTAMP): after 1970, before ~5138.
MAX_TIMESTAMP = 1e11
CHECKPOINT = "backfill"  # {prefix}backfill:<digest>


class BackfillError(RuntimeError):
    """The history cannot be loaded (unreadable rows, Redis unreachable or lost midway)."""


@dataclass
class BackfillResult:
    rows: int  # events in the files (after the reading options)
    users: int
    done: int  # rows written so far (== rows once complete)
    resumed_from: int  # rows the checkpoint held when this run started (0 without resume)
    accepted: int  # counts over every run of this backfill since it started at row 0
    duplicates: int
    too_old: int
    event_log: bool
    checkpoint: str  # the Redis key holding the progress
    seconds: float  # this run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def setting(name: str) -> Any:
    """A service setting as the service reads it: SEQREC_<NAME>, else its default (app/settings.py).
    The window size and TTL must be the service's, or backfilled windows would be cut differently."""
    field = Settings.model_fields[name]
    raw = os.environ.get(f"SEQREC_{name.upper()}")
    return field.default if raw is None else type(field.default)(raw)


def read_events(paths: Sequence[Path], opts: FileOptions = FileOptions()) -> Any:
    """The files' rows as one polars frame (user, item, t, event_id) in backfill order."""
    import polars as pl

    if not paths:
        raise DatasetError("no file given")
    if opts.type_col:
        raise DatasetError("backfill stores events of the default type only; drop --type-col")
    opts.check()
    frames = []
    for path in paths:
        one = read_one(Path(path), opts)
        if one.roles["time"] is None:
            raise DatasetError(
                f"{path}: no time column; the store orders a user's events by time, so backfill needs one "
                f"(map it with --time-col)"
            )
        f = one.frame
        if one.roles["event"]:
            # read_one scopes event ids by user ("user US id"); the store keys them by user already.
            eid = f["eid"].str.split_exact("\x1f", 1).struct.field("field_1")
        else:
            # POST /events' id for an event sent without one (app/api/routes/events.py).
            eid = pl.Series([f"t{t:.6f}" for t in f["t"].to_list()], dtype=pl.String)
        frames.append(f.select("user", "item", "t").with_columns(eid.alias("event_id")))
    df = pl.concat(frames)
    _check(df, paths)
    return df.sort(["user", "t", "event_id", "item"])


def _check(df: Any, paths: Sequence[Path]) -> None:
    """What POST /events would refuse: event ids against the id rule, times out of range or ahead."""
    import polars as pl

    names = ", ".join(str(p) for p in paths)
    bad_id = next((e for e in df["event_id"].unique().to_list() if e is None or not valid_id(e)), "")
    if bad_id != "":
        raise DatasetError(
            f"{names}: an event id is empty or breaks the id rule (no '/', control or format characters, "
            f"no leading or trailing space); POST /events would refuse it"
        )
    skew = setting("max_clock_skew_s")
    limit = min(MAX_TIMESTAMP, time.time() + skew) if skew else MAX_TIMESTAMP
    out = df.filter((pl.col("t") < 0) | (pl.col("t") >= limit) | pl.col("t").is_nan())
    if out.height:
        row = out.row(0, named=True)
        raise DatasetError(
            f"{names}: user {row['user']!r} has an event at {row['t']} s, outside [0, {limit:.0f}): before 1970, "
            f"or more than SEQREC_MAX_CLOCK_SKEW_S ({skew} s) ahead of now, which POST /events refuses"
        )


def checkpoint_key(paths: Sequence[Path], opts: FileOptions, prefix: str) -> str:
    """One key per content and reading options: another file, or the same file read otherwise,
    is another backfill."""
    h = hashlib.sha256()
    for p in paths:
        h.update(file_digest(Path(p)).encode())
    h.update(json.dumps(opts.to_dict(), sort_keys=True).encode())
    return f"{prefix}{CHECKPOINT}:{h.hexdigest()[:16]}"


def open_store(url: str, prefix: str, max_history: int, ttl_s: int, log: bool) -> RedisStore | ClusterStore:
    """The service's store class for the URL; timeouts for bulk writes, not for serving."""
    event_log = EventLog(int(setting("event_log_retention_s"))) if log else None
    opts: dict[str, Any] = {"prefix": prefix, "read_timeout": 5.0, "write_timeout": 60.0, "event_log": event_log}
    if is_cluster_url(url):
        return ClusterStore(url, max_history, ttl_s, **opts)
    return RedisStore(url, max_history, ttl_s, **opts)


def _safe(url: str) -> str:
    """The URL without credentials (for messages)."""
    head, _, tail = url.rpartition("@")
    return f"{url.split('://', 1)[0]}://…@{tail}" if head else url


def backfill(
    paths: Sequence[Path],
    redis_url: str,
    prefix: str = "seqrec:",
    batch: int = 10_000,
    resume: bool = False,
    log: bool = False,
    opts: FileOptions = FileOptions(),
    max_history: int | None = None,
    ttl_s: int | None = None,
    progress: bool = True,
    store_factory: Callable[..., Any] = open_store,
) -> BackfillResult:
    """Write the files' events to the store at `redis_url` (see the module docstring)."""
    if batch < 1:
        raise BackfillError(f"--batch must be at least 1, got {batch}")
    df = read_events(paths, opts)
    n = int(max_history if max_history is not None else setting("max_history"))
    ttl = int(ttl_s if ttl_s is not None else setting("history_ttl_s"))
    key = checkpoint_key(paths, opts, prefix)
    store = store_factory(redis_url, prefix, n, ttl, log)
    return asyncio.run(_run(store, df, key, redis_url, batch, resume, log, progress))


async def _run(
    store: Any, df: Any, key: str, url: str, batch: int, resume: bool, log: bool, progress: bool
) -> BackfillResult:
    t0 = time.perf_counter()
    total = df.height
    try:
        state = await _load(store, key, total, log) if resume else None
        counts = {k: int(state[k]) if state else 0 for k in ("accepted", "duplicates", "too_old")}
        start = int(state["done"]) if state else 0
        done, last_note = start, 0.0
        if progress and start:
            print(f"backfill: resuming after {start:,} of {total:,} rows", file=sys.stderr, flush=True)
        # Batches end where a user's events end, so each user is written by one script call and
        # `accepted` is what the window keeps (a user split over two batches could see events
        # accepted by the first pushed out by the second).
        starts = [*(df["user"] != df["user"].shift(1)).fill_null(True).arg_true().to_list(), total]
        while done < total:
            end = starts[bisect.bisect_left(starts, done + batch)] if done + batch < total else total
            rows = df.slice(done, end - done).select("user", "item", "t", "event_id").iter_rows()
            events = [Event(u, i, float(t), e) for u, i, t, e in rows]
            res = await store.append(events)
            counts["accepted"] += res.accepted
            counts["duplicates"] += res.duplicates
            counts["too_old"] += res.too_old
            done = end
            await _save(store, key, {"rows": total, "done": done, "event_log": log, **counts})
            if progress and (time.perf_counter() - last_note >= 2 or done == total):
                last_note = time.perf_counter()
                rate = (done - start) / max(last_note - t0, 1e-9)
                print(
                    f"backfill: {done:,}/{total:,} rows ({100 * done / total:.0f}%), {rate:,.0f} events/s",
                    file=sys.stderr,
                    flush=True,
                )
    except StoreUnavailable as exc:
        where = f"after {done:,} of {total:,} rows" if "done" in locals() else "before the first batch"
        raise BackfillError(
            f"redis at {_safe(url)} failed {where} ({exc}); the checkpoint holds every batch written: "
            f"rerun with --resume to continue"
        ) from exc
    finally:
        await store.close()
    return BackfillResult(
        rows=total,
        users=df["user"].n_unique(),
        done=done,
        resumed_from=start,
        event_log=log,
        checkpoint=key,
        seconds=round(time.perf_counter() - t0, 2),
        **counts,
    )


async def _load(store: Any, key: str, total: int, log: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: nothing was written yet)."""
    raw = await _call(store, "get", key)
    if raw is None:
        return None
    state: dict[str, Any] = json.loads(raw)
    if int(state["rows"]) != total:
        raise BackfillError(f"the checkpoint {key} is for {state['rows']} rows, these files hold {total}")
    if bool(state["event_log"]) != log:
        was = "with" if state["event_log"] else "without"
        raise BackfillError(f"the checkpoint {key} is of a backfill {was} the event log: resume it the same way")
    return state


async def _save(store: Any, key: str, state: dict[str, Any]) -> None:
    await _call(store, "set", key, json.dumps(state))


async def _call(store: Any, op: str, *args: Any) -> Any:
    """A plain command through the store's own client (a cluster client routes it by key)."""
    try:
        return await getattr(store.redis, op)(*args)
    except Exception as exc:  # redis-py's errors, OSError, timeouts: the store is not there
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
