"""Snapshot of the event store against a real redis-server: exact histories back, clear failures."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis

from app.stores import Event, RedisStore
from tests.support.procs import ROOT, RedisProc, free_port
from training.snapshot import SnapshotError, connect, parse_time, snapshot, snapshot_log

PREFIX = "snap[1]*:"  # glob characters in the prefix must match themselves only


def _write(url: str, events: list[Event], prefix: str = PREFIX) -> None:
    async def go() -> None:
        store = RedisStore(url, max_history=50, ttl_s=3600, prefix=prefix)
        for ev in events:  # one by one: later calls carry late events and duplicates
            await store.append([ev])
        await store.close()

    asyncio.run(go())


EVENTS = [
    Event("u1", "i1", 100.0, "e1"),
    Event("u1", "i2", 200.0, "e2"),
    Event("u1", "i0", 50.0, "e0"),  # late: lands before e1
    Event("u1", "i2", 200.0, "e2"),  # duplicate: stored once
    Event("u1", "i2", 300.0, "e3"),  # same item again, another event: kept
    Event("ユーザー✓", "アイテム-é", 1.5, "ev-ü"),
    Event("ユーザー✓", "🎬 42", 2.25, "t2.250000"),
    Event("u:with:colons", "x", 7.0, "e7"),
]
EXPECTED = {
    "u1": [("i0", 50.0, "e0"), ("i1", 100.0, "e1"), ("i2", 200.0, "e2"), ("i2", 300.0, "e3")],
    "ユーザー✓": [("アイテム-é", 1.5, "ev-ü"), ("🎬 42", 2.25, "t2.250000")],
    "u:with:colons": [("x", 7.0, "e7")],
}


def _histories(df: pl.DataFrame) -> dict[str, list[tuple[str, float, str]]]:
    out: dict[str, list[tuple[str, float, str]]] = {}
    for row in df.sort(["user_id", "timestamp", "event_id"]).iter_rows(named=True):
        out.setdefault(row["user_id"], []).append((row["item_id"], row["timestamp"], row["event_id"]))
    return out


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip_exact(redis_proc: RedisProc, tmp_path: Path, suffix: str) -> None:
    _write(redis_proc.url, EVENTS)
    _write(redis_proc.url, [Event("other", "zz", 1.0, "e")], prefix="elsewhere:")  # another prefix: not read
    out = tmp_path / f"events{suffix}"
    res = snapshot(connect(redis_proc.url), out, prefix=PREFIX, chunk_rows=2, scan_count=1)
    df = pl.read_parquet(out) if suffix == ".parquet" else pl.read_csv(out, schema_overrides={"timestamp": pl.Float64})
    assert df.columns == ["user_id", "item_id", "timestamp", "event_id"]
    assert _histories(df) == EXPECTED
    assert (res.users, res.events) == (3, 7)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # temp parts cleaned up


def test_empty_store_writes_an_empty_file(redis_proc: RedisProc, tmp_path: Path) -> None:
    out = tmp_path / "none.parquet"
    res = snapshot(connect(redis_proc.url), out, prefix=PREFIX)
    assert res.events == 0 and pl.read_parquet(out).height == 0


def test_unreachable_redis_exits_nonzero_without_file(tmp_path: Path) -> None:
    out = tmp_path / "events.parquet"
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "snapshot", "--redis-url", url, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot reach redis" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


class _DropsAfter:
    """A client whose pipelines fail after `n` executions: Redis lost midway through the walk."""

    def __init__(self, client: redis.Redis, n: int) -> None:
        self.client, self.left = client, n
        self.pending: list[bytes] | None = None

    def scan(self, cursor: int = 0, match: str | None = None, count: int | None = None) -> tuple[int, list[bytes]]:
        # One key per call, whatever SCAN's COUNT hint does on a small keyspace, so the walk
        # really has several pipelines and the loss falls between them.
        if self.pending is None:
            self.pending = list(self.client.scan_iter(match=match))
        key = [self.pending.pop(0)] if self.pending else []
        return (1 if self.pending else 0), key

    def pipeline(self, transaction: bool = False) -> object:
        pipe = self.client.pipeline(transaction=transaction)
        outer = self
        real = pipe.execute

        def execute() -> object:
            outer.left -= 1
            if outer.left < 0:
                raise redis.ConnectionError("Connection closed by server.")
            return real()

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


def test_redis_lost_midway_leaves_no_partial_file(redis_proc: RedisProc, tmp_path: Path) -> None:
    _write(redis_proc.url, EVENTS)
    out = tmp_path / "events.parquet"
    out.write_bytes(b"previous snapshot")  # a failed run must not clobber it either
    with pytest.raises(SnapshotError, match="no file written"):
        snapshot(_DropsAfter(connect(redis_proc.url), 1), out, prefix=PREFIX, chunk_rows=1, scan_count=1)
    assert out.read_bytes() == b"previous snapshot"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_cli_snapshot(redis_proc: RedisProc, tmp_path: Path) -> None:
    _write(redis_proc.url, EVENTS, prefix="seqrec:")
    out = tmp_path / "events.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "snapshot", "--redis-url", redis_proc.url, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"events": 7' in proc.stdout
    assert _histories(pl.read_parquet(out)) == EXPECTED


def test_snapshot_event_ids_are_per_user_when_prepared(tmp_path: Path) -> None:
    """The store scopes event ids by user: two users' "e1" are two events, not one duplicate."""
    from training.data import prepare_files

    rows = [
        {"user_id": f"u{u}", "item_id": f"i{(u + n) % 7}", "timestamp": float(n), "event_id": f"e{n}"}
        for u in range(8)
        for n in range(7)
    ]
    snap = tmp_path / "events.parquet"
    pl.DataFrame(rows).write_parquet(snap)
    data = prepare_files([snap], None, cache_dir=tmp_path / "cache")
    assert data.num_interactions == len(rows)


def test_snapshot_of_a_redis_cluster_reads_every_master(redis_cluster: Any, tmp_path: Path) -> None:
    """The cluster store hash-tags each user's keys ({user}, with } and % escaped) across three masters:
    the snapshot scans every primary and gives back exactly the ids and histories that were written."""
    from app.stores.cluster import ClusterStore

    prefix = "snapc:"
    events = [
        *EVENTS,
        Event("a}b%7D{c", "i9", 9.0, "e9"),
        *(Event(f"user-{n}", "i1", float(n), "e") for n in range(60)),
    ]

    async def go() -> None:
        store = ClusterStore(redis_cluster.url, max_history=50, ttl_s=3600, prefix=prefix, read_timeout=2.0)
        for ev in events:
            await store.append([ev])
        await store.close()

    asyncio.run(go())
    out = tmp_path / "cluster.parquet"
    res = snapshot(connect(redis_cluster.url), out, prefix=prefix, chunk_rows=7, scan_count=5)
    got = _histories(pl.read_parquet(out))
    assert {u: got[u] for u in EXPECTED} == EXPECTED
    assert got["a}b%7D{c"] == [("i9", 9.0, "e9")]
    assert (res.users, res.events) == (3 + 1 + 60, 7 + 1 + 60)


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(SnapshotError, match=rf"cannot reach redis at redis\+cluster://127\.0\.0\.1:{port}"):
        connect(f"redis+cluster://:secret@127.0.0.1:{port}", socket_timeout=0.5)


# ------------------------------------------------------------------------------------- the event log
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "training.cli", "snapshot", *args, "--no-progress"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_log_export_round_trip_exact(redis_proc: RedisProc, tmp_path: Path, suffix: str) -> None:
    """The log's export has the window export's columns and rows (while the window holds everything)."""
    _write(redis_proc.url, EVENTS)
    _write(redis_proc.url, [Event("other", "zz", 1.0, "e")], prefix="elsewhere:")  # another prefix: not read
    out = tmp_path / f"log{suffix}"
    res = snapshot_log(connect(redis_proc.url), out, prefix=PREFIX, chunk_rows=2, count=2)
    df = pl.read_parquet(out) if suffix == ".parquet" else pl.read_csv(out, schema_overrides={"timestamp": pl.Float64})
    assert df.columns == ["user_id", "item_id", "timestamp", "event_id"]
    assert _histories(df) == EXPECTED
    assert (res.users, res.events, res.streams) == (3, 7, 1)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_cli_log_keeps_what_the_window_dropped(redis_proc: RedisProc, tmp_path: Path) -> None:
    """60 events of one user in a window of 50: `--source log` (the default) exports all 60, `--source
    window` the last 50, and `seqrec prepare` reads the log's file."""
    from training.data import prepare_files
    from training.data.files import FileOptions

    events = [Event("u", f"i{n % 9}", 1000.0 + n, f"e{n}") for n in range(60)]
    events += [Event(f"v{k}", "i1", 1.0 + n, f"f{n}") for k in range(5) for n in range(6)]
    _write(redis_proc.url, events, prefix="seqrec:")
    log, window = tmp_path / "log.parquet", tmp_path / "window.parquet"
    p = _cli("--redis-url", redis_proc.url, "--out", str(log))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["events"] == 90 and json.loads(p.stdout)["source"] == "log"
    p = _cli("--redis-url", redis_proc.url, "--out", str(window), "--source", "window")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["events"] == 80
    assert _histories(pl.read_parquet(log))["u"] == [(f"i{n % 9}", 1000.0 + n, f"e{n}") for n in range(60)]
    assert len(_histories(pl.read_parquet(window))["u"]) == 50
    data = prepare_files([log], FileOptions(user_core=1, item_core=1), cache_dir=tmp_path / "cache")
    assert data.num_interactions == 90


def test_cli_log_range_and_checkpoint(redis_proc: RedisProc, tmp_path: Path) -> None:
    _write(redis_proc.url, EVENTS[:3], prefix="seqrec:")
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    _write(redis_proc.url, EVENTS[3:], prefix="seqrec:")
    iso = datetime.fromtimestamp(cut, UTC).isoformat()
    out = tmp_path / "after.csv"
    p = _cli("--redis-url", redis_proc.url, "--out", str(out), "--since", iso)
    assert p.returncode == 0, p.stderr
    assert sorted(pl.read_csv(out)["event_id"].to_list()) == ["e3", "e7", "ev-ü", "t2.250000"]
    p = _cli("--redis-url", redis_proc.url, "--out", str(out), "--until", f"{cut:.3f}")
    assert sorted(pl.read_csv(out)["event_id"].to_list()) == ["e0", "e1", "e2"]
    ckpt = tmp_path / "ckpt.json"
    counts = []
    for _ in range(2):
        p = _cli("--redis-url", redis_proc.url, "--out", str(out), "--checkpoint", str(ckpt))
        assert p.returncode == 0, p.stderr
        counts.append(json.loads(p.stdout)["events"])
    assert counts == [7, 0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "window", "--since", "0"], "select from the event log"),
        (["--source", "logs"], "--source is 'log' or 'window'"),
        (["--since", "yesterday"], "neither epoch seconds nor an ISO-8601 time"),
    ],
)
def test_cli_log_options_refused(redis_proc: RedisProc, tmp_path: Path, args: list[str], message: str) -> None:
    p = _cli("--redis-url", redis_proc.url, "--out", str(tmp_path / "x.parquet"), *args)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_empty_log_beside_histories_warns(redis_proc: RedisProc, tmp_path: Path) -> None:
    """Histories written without the log (SEQREC_EVENT_LOG=false, or before it existed): the log export
    is empty and says where the events are."""

    async def go() -> None:
        store = RedisStore(redis_proc.url, max_history=50, ttl_s=3600, prefix="seqrec:", event_log=None)
        await store.append(EVENTS)
        await store.close()

    asyncio.run(go())
    p = _cli("--redis-url", redis_proc.url, "--out", str(tmp_path / "x.parquet"))
    assert p.returncode == 0 and json.loads(p.stdout)["events"] == 0
    assert "--source window" in p.stderr


def test_parse_time() -> None:
    assert parse_time("1700000000.5") == 1_700_000_000.5
    assert parse_time("2023-11-14T22:13:20Z") == parse_time("2023-11-14T22:13:20") == 1_700_000_000.0
    assert parse_time("2023-11-15T00:13:20+02:00") == 1_700_000_000.0
