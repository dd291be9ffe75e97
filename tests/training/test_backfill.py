"""`seqrec backfill` against a real redis-server: every event once, idempotent, resumable, and the
same windows (and log) as POST /events of the same events; then the retrain's input, `prepare` of
the offline log and a snapshot, holds every event once.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.stores import ClusterStore, Event, RedisStore, StoreUnavailable
from tests.support.procs import RedisProc
from training.backfill import BackfillError, backfill, checkpoint_key, open_store
from training.data.files import FileOptions
from training.data.readers import DatasetError
from training.snapshot import connect, snapshot_log

N = 20  # the window: most users below have more events, so trimming and `too_old` are exercised
USERS, ITEMS = 30, 50
API_KEY = "backfill-key"
Row = tuple[str, str, float, str]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    r = RedisProc().start()
    yield r.url
    r.kill()


def history(seed: int = 0, with_ids: bool = True) -> pl.DataFrame:
    """user_id, item_id, timestamp (with fractions), event_id; 5-60 events per user, rows shuffled
    (a log is not sorted by user), items repeating within a user."""
    rng = random.Random(seed)
    rows = []
    for u in range(USERS):
        t = 1_700_000_000 + rng.randrange(86_400)
        for n in range(rng.randrange(5, 61)):
            t += rng.randrange(1, 5000) + rng.random()
            rows.append((f"u{u}", f"i{rng.randrange(ITEMS)}", round(t, 3), f"u{u}-e{n}"))
    rng.shuffle(rows)
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "event_id"], orient="row")
    return df if with_ids else df.drop("event_id")


def write(df: pl.DataFrame, path: Path) -> Path:
    df.write_csv(path)
    return path


def prefix() -> str:
    return f"bf-{uuid.uuid4().hex[:8]}:"


def windows(url: str, pre: str) -> dict[str, list[tuple[str, float]]]:
    """Every user's window as stored: members with their scores, in order."""
    r = redis.Redis.from_url(url, decode_responses=True)
    out = {k[len(pre) + 2 :]: r.zrange(k, 0, -1, withscores=True) for k in r.scan_iter(f"{pre}h:*")}
    r.close()
    return out


def logged(url: str, pre: str, tmp: Path) -> list[Row]:
    out = tmp / f"{uuid.uuid4().hex[:6]}.parquet"
    snapshot_log(connect(url), out, prefix=pre, progress=False)
    df = pl.read_parquet(out)
    return list(df.select("user_id", "item_id", "timestamp", "event_id").iter_rows())


def file_rows(df: pl.DataFrame) -> list[Row]:
    if "event_id" not in df.columns:  # the id POST /events gives an event without one
        df = df.with_columns(event_id=pl.Series([f"t{float(t):.6f}" for t in df["timestamp"]]))
    return list(df.select("user_id", "item_id", pl.col("timestamp").cast(pl.Float64), "event_id").iter_rows())


def expected_windows(df: pl.DataFrame) -> dict[str, list[tuple[str, float]]]:
    """The last N events by time of each user, as the store's members."""
    out: dict[str, list[tuple[str, float]]] = {}
    for user, item, t, eid in sorted(file_rows(df), key=lambda r: (r[0], r[2], f"{r[3]}\x1f{r[1]}")):
        out.setdefault(user, []).append((f"{eid}\x1f{item}", t))
    return {u: w[-N:] for u, w in out.items()}


# ---------------------------------------------------------------------------------------------- runs
def test_backfill_then_snapshot_returns_every_event_once(redis_url: str, tmp_path: Path) -> None:
    df = history()
    pre = prefix()
    res = backfill([write(df, tmp_path / "h.csv")], redis_url, pre, batch=97, log=True, max_history=N, progress=False)
    assert (res.rows, res.done, res.users) == (df.height, df.height, USERS)
    # A batch holds whole users: accepted is what the windows keep, too old what they do not.
    assert res.accepted == sum(min(N, c) for c in df["user_id"].value_counts()["count"])
    assert res.accepted + res.too_old == df.height and res.duplicates == 0
    got = logged(redis_url, pre, tmp_path)
    assert len(got) == df.height  # once each ...
    assert sorted(got) == sorted(file_rows(df))  # ... and exactly the file's events
    assert windows(redis_url, pre) == expected_windows(df)


def test_without_the_log_the_windows_only(redis_url: str, tmp_path: Path) -> None:
    df = history(seed=1, with_ids=False)
    pre = prefix()
    res = backfill([write(df, tmp_path / "h.csv")], redis_url, pre, max_history=N, progress=False)
    assert res.accepted == sum(min(N, c) for c in df["user_id"].value_counts()["count"])
    assert not res.event_log and res.accepted + res.too_old == df.height
    assert windows(redis_url, pre) == expected_windows(df)
    assert not redis.Redis.from_url(redis_url).exists(f"{pre}log")


def test_rerun_adds_nothing(redis_url: str, tmp_path: Path) -> None:
    df = history(seed=2)
    pre, path = prefix(), write(df, tmp_path / "h.csv")
    first = backfill([path], redis_url, pre, batch=64, log=True, max_history=N, progress=False)
    before = (windows(redis_url, pre), redis.Redis.from_url(redis_url).xlen(f"{pre}log"))
    again = backfill([path], redis_url, pre, batch=1000, log=True, max_history=N, progress=False)
    assert first.accepted > 0 and again.accepted == 0
    # The window recognises what it holds; what it trimmed comes back as too old (and the replay
    # index keeps it out of the log).
    assert again.duplicates == first.accepted and again.too_old == first.too_old
    assert (windows(redis_url, pre), redis.Redis.from_url(redis_url).xlen(f"{pre}log")) == before
    assert sorted(logged(redis_url, pre, tmp_path)) == sorted(file_rows(df))


class FailingStore:
    """The real store, whose `fail_at`-th append raises as a lost Redis would (after writing half
    of the batch: a stop midway through a batch)."""

    def __init__(self, store: Any, fail_at: int) -> None:
        self.store, self.fail_at, self.calls = store, fail_at, 0
        self.redis = store.redis

    async def append(self, events: list[Event]) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            await self.store.append(events[: len(events) // 2])
            raise StoreUnavailable("redis: ConnectionError: connection lost (simulated)")
        return await self.store.append(events)

    async def close(self) -> None:
        await self.store.close()


def test_an_interrupted_backfill_resumed_completes_exactly(redis_url: str, tmp_path: Path) -> None:
    df = history(seed=3)
    path = write(df, tmp_path / "h.csv")
    whole = prefix()
    backfill([path], redis_url, whole, batch=100, log=True, max_history=N, progress=False)

    pre = prefix()

    def failing(*args: Any) -> FailingStore:
        return FailingStore(open_store(*args), fail_at=4)

    with pytest.raises(BackfillError, match=r"after [\d,]+ of [\d,]+ rows .*--resume"):
        backfill([path], redis_url, pre, batch=100, log=True, max_history=N, progress=False, store_factory=failing)
    assert windows(redis_url, pre) != windows(redis_url, whole)  # really stopped short
    stored = json.loads(redis.Redis.from_url(redis_url).get(checkpoint_key([path], FileOptions(), pre)))
    assert 300 <= stored["done"] < df.height  # three whole batches of at least 100 rows
    with pytest.raises(BackfillError, match="with the event log: resume it the same way"):
        backfill([path], redis_url, pre, batch=100, resume=True, log=False, max_history=N, progress=False)
    res = backfill([path], redis_url, pre, batch=100, resume=True, log=True, max_history=N, progress=False)
    assert (res.resumed_from, res.done) == (stored["done"], df.height)
    # Every event counted once over both runs; the half batch written before the stop counts as
    # duplicates when it is sent again.
    assert res.accepted + res.duplicates + res.too_old == df.height
    assert 0 < res.duplicates < 100  # the half batch (whole users: a batch may exceed 100 rows)
    assert windows(redis_url, pre) == windows(redis_url, whole) == expected_windows(df)
    got = logged(redis_url, pre, tmp_path)
    assert len(got) == df.height and sorted(got) == sorted(file_rows(df))
    # A finished backfill resumed again writes nothing.
    done = backfill([path], redis_url, pre, batch=100, resume=True, log=True, max_history=N, progress=False)
    assert (done.resumed_from, done.accepted, done.duplicates) == (df.height, res.accepted, res.duplicates)


# ------------------------------------------------------------------------- the same as POST /events
@pytest.fixture(scope="module")
def bundle(synthetic: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SASRec bundle: the API needs one to start."""
    from training.export import export_bundle
    from training.train import train

    run = tmp_path_factory.mktemp("bf-run")
    tiny = {"epochs": 1, "max_users": 100}
    train("sasrec", synthetic, run, model_overrides={"max_len": 20, "dim": 8, "num_layers": 1}, train_overrides=tiny)
    return export_bundle(run / "best.pt", tmp_path_factory.mktemp("bf-bundle"), name="tiny", program=False)


@pytest.mark.parametrize("with_ids", [True, False], ids=["event ids", "no event ids"])
def test_windows_equal_what_post_events_gives(redis_url: str, bundle: Path, tmp_path: Path, with_ids: bool) -> None:
    df = history(seed=4, with_ids=with_ids)
    posted, filled = prefix(), prefix()
    settings = Settings(
        bundles=[bundle], redis_url=redis_url, key_prefix=posted, max_history=N, api_key=API_KEY, online_tracking=False
    )
    with TestClient(create_app(settings)) as client:
        rows = df.to_dicts()
        for i in range(0, len(rows), 150):  # the file's (shuffled) order, in POST-sized batches
            r = client.post("/events", json={"events": rows[i : i + 150]}, headers={"X-API-Key": API_KEY})
            assert r.status_code == 200, r.text
    backfill([write(df, tmp_path / "h.csv")], redis_url, filled, log=True, max_history=N, progress=False)
    assert windows(redis_url, filled) == windows(redis_url, posted) == expected_windows(df)
    assert sorted(logged(redis_url, filled, tmp_path)) == sorted(logged(redis_url, posted, tmp_path))


# --------------------------------------------------------------------------------------- refusals
def test_refusals_name_the_problem(redis_url: str, tmp_path: Path) -> None:
    df = history(seed=5)
    with pytest.raises(DatasetError, match="no time column"):
        backfill([write(df.drop("timestamp"), tmp_path / "a.csv")], redis_url, prefix(), progress=False)
    bad = df.with_columns(event_id=pl.when(pl.col("user_id") == "u3").then(pl.lit("a/b")).otherwise("event_id"))
    with pytest.raises(DatasetError, match="id rule"):
        backfill([write(bad, tmp_path / "b.csv")], redis_url, prefix(), progress=False)
    future = df.with_columns(timestamp=pl.col("timestamp") + 1e10)
    with pytest.raises(DatasetError, match="SEQREC_MAX_CLOCK_SKEW_S"):
        backfill([write(future, tmp_path / "c.csv")], redis_url, prefix(), progress=False)
    with pytest.raises(BackfillError, match=r"redis at redis://127.0.0.1:1/0 failed after 0 of"):
        backfill([write(df, tmp_path / "d.csv")], "redis://127.0.0.1:1/0", prefix(), progress=False)


# ------------------------------------------------------------------- the retrain: offline + snapshot
def test_prepare_of_offline_log_and_snapshot_holds_every_event_once(redis_url: str, tmp_path: Path) -> None:
    """The live loop's retrain input: the offline log, backfilled with the log on (so each of its
    events is in both files), plus live events; `prepare --file offline.csv --file events.parquet`
    keeps each event once and every live event."""
    from training.data.registry import prepare_files

    df = history(seed=6, with_ids=False)  # an offline log without event ids: matched by user, item, time
    offline = write(df, tmp_path / "offline.csv")
    pre = prefix()
    backfill([offline], redis_url, pre, log=True, max_history=N, progress=False)
    t_end = df["timestamp"].max()
    rng = random.Random(7)
    live = [
        Event(f"u{rng.randrange(USERS)}", f"i{rng.randrange(ITEMS)}", t_end + 10 * n + 0.5, f"live-{n}")
        for n in range(300)
    ]

    async def post_live() -> None:
        store = RedisStore(redis_url, N, 3600, prefix=pre, read_timeout=2.0)
        for i in range(0, len(live), 50):
            await store.append(live[i : i + 50])
        await store.close()

    asyncio.run(post_live())
    events = tmp_path / "events.parquet"
    snapshot_log(connect(redis_url), events, prefix=pre, progress=False)
    assert pl.read_parquet(events).height == df.height + len(live)  # the offline events are in both files

    opts = FileOptions(user_core=1, item_core=1, min_len=1)
    data = prepare_files([offline, events], opts, name="bf-combined", cache_dir=tmp_path / "cache")
    got = sorted(
        (data.user_ids[u], data.item_ids[int(i) - 1], int(t))
        for u in range(len(data.user_ids))
        for i, t in zip(
            data.items[data.offsets[u] : data.offsets[u + 1]],
            data.timestamps[data.offsets[u] : data.offsets[u + 1]],
            strict=True,
        )
    )
    # (SeqData keeps whole seconds.)
    want = sorted(
        [(u, i, int(t)) for u, i, t, _ in file_rows(df)] + [(e.user_id, e.item_id, int(e.timestamp)) for e in live]
    )
    assert len(got) == df.height + len(live)  # each event once
    assert got == sorted(want)  # every live event (and every offline one) is in the prepared data


def test_a_redis_cluster_gets_the_same_windows_and_log(redis_cluster: Any, tmp_path: Path) -> None:
    """redis+cluster://…: the cluster store's classes, keys in each user's slot, the checkpoint too."""
    df = history(seed=8)
    path = write(df, tmp_path / "h.csv")
    pre = prefix()
    res = backfill([path], redis_cluster.url, pre, batch=200, log=True, max_history=N, progress=False)
    assert res.accepted == sum(min(N, c) for c in df["user_id"].value_counts()["count"])
    got = logged(redis_cluster.url, pre, tmp_path)
    assert len(got) == df.height and sorted(got) == sorted(file_rows(df))

    async def read_windows() -> dict[str, list[tuple[str, float]]]:
        store = ClusterStore(redis_cluster.url, N, 3600, prefix=pre, read_timeout=2.0)
        out = {}
        for u in df["user_id"].unique().to_list():
            items, times = await store.history_times(u)
            out[u] = list(zip(items, times, strict=True))
        await store.close()
        return out

    want = {u: [(m.split("\x1f")[1], t) for m, t in w] for u, w in expected_windows(df).items()}
    assert asyncio.run(read_windows()) == want
    again = backfill([path], redis_cluster.url, pre, resume=True, log=True, max_history=N, progress=False)
    assert (again.resumed_from, again.accepted) == (df.height, res.accepted)  # the checkpoint, read back
