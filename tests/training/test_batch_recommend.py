"""Batch lists (training/batch_recommend.py) equal what GET /recommend answers for the same history:
1,000 users stored through the API in a private Redis, their lists read back one request at a time,
and the batch run over the same Redis windows and over snapshot files of the same events (one
written here, the window and log snapshots `seqrec snapshot` writes), with and without a filter
(the catalogue in that Redis), seen items excluded or not; every 13th user has disliked an item."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support.asgi import get_json
from tests.support.data import synthetic_seqdata
from tests.support.parity import PATIENT_STORE
from tests.support.procs import RedisNotInstalled, RedisProc
from training.batch_recommend import Progress, recommend_batch
from training.data import SeqData
from training.data.readers import DatasetError

KEY = {"X-API-Key": "k3y"}
USERS = 1000
MAX_HISTORY = 25  # shorter than many histories: the batch must cut them as the store does
FILTER = 'category = "even" and price < 60'


@pytest.fixture(scope="module")
def data() -> SeqData:
    return synthetic_seqdata(num_users=USERS, num_items=120, min_len=3, max_len=40, seed=7)


@pytest.fixture(scope="module")
def bundle(data: SeqData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export_bundle
    from training.train import train

    run = tmp_path_factory.mktemp("batch-run")
    model = {"max_len": 20, "dim": 16, "num_layers": 1}
    train("sasrec", data, run, model_overrides=model, train_overrides={"epochs": 1, "max_users": 300}, progress=False)
    return export_bundle(run / "best.pt", tmp_path_factory.mktemp("batch-bundle"), name="batch-sasrec")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with RedisProc(tmp_path_factory.mktemp("redis")) as r:
            yield r.url
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))


def events(data: SeqData) -> list[dict[str, Any]]:
    """Every event of the dataset; the users with the fewest events get items the bundle does not
    know instead (their answer is the popularity list)."""
    out: list[dict[str, Any]] = []
    assert data.timestamps is not None
    for u, user in enumerate(data.user_ids):
        lo, hi = int(data.offsets[u]), int(data.offsets[u + 1])
        unknown = u % 97 == 0
        for n in range(lo, hi):
            item = f"new-{n}" if unknown else data.item_ids[int(data.items[n]) - 1]
            out.append({"user_id": user, "item_id": item, "timestamp": int(data.timestamps[n]), "event_id": f"e{n}"})
    return out


@pytest.fixture(scope="module")
def served(data: SeqData, bundle: Path, redis_url: str) -> Iterator[tuple[TestClient, Settings, list[dict[str, Any]]]]:
    prefix = f"batch-{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        bundles=[bundle],
        api_key="k3y",
        redis_url=redis_url,
        key_prefix=prefix,
        max_history=MAX_HISTORY,
        history_ttl_s=10 * 365 * 86400,
        **PATIENT_STORE,  # a loaded test machine must not turn reads into store-unavailable answers
    )
    evs = events(data)
    items = [
        {"item_id": i, "category": "even" if n % 2 == 0 else "odd", "price": float(n % 100), "available": n % 11 != 0}
        for n, i in enumerate(data.item_ids)
    ]
    with TestClient(create_app(settings)) as c:
        for start in range(0, len(evs), 1000):
            assert c.post("/events", json={"events": evs[start : start + 1000]}, headers=KEY).status_code == 200
        assert c.post("/catalog/items", json={"items": items}, headers=KEY).status_code == 200
        # Some users dislike the item at the top of their list: the service never lists it to them again.
        dislikes = []
        for user in sorted({e["user_id"] for e in evs})[::13]:
            top = c.get(f"/recommend/{user}", params={"k": 1}).json()["items"][0]["item_id"]
            dislikes.append({"user_id": user, "item_id": top, "timestamp": 1_750_000_000, "type": "dislike"})
        assert c.post("/events", json={"events": dislikes}, headers=KEY).status_code == 200
        yield c, settings, evs, dislikes


def answers(c: TestClient, users: list[str], **params: Any) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for u, got in zip(users, get_json(c, [(f"/recommend/{u}", {"k": 10, **params}) for u in users]), strict=True):
        assert got["fallback"] != "store_unavailable", u  # the history was read
        out[u] = [(i["item_id"], i["score"]) for i in got["items"]]
    return out


def lists(path: Path) -> dict[str, list[tuple[str, float]]]:
    df = pl.read_parquet(path)
    assert df.columns == ["user_id", "rank", "item_id", "score"]
    out: dict[str, list[tuple[str, float]]] = {}
    for user, rank, item, score in df.iter_rows():
        got = out.setdefault(user, [])
        assert rank == len(got) + 1  # ranks 1..k in order, best first
        got.append((item, score))
    return out


def same(batch: dict[str, list[tuple[str, float]]], service: dict[str, list[tuple[str, float]]]) -> None:
    assert batch.keys() == service.keys()
    for u, want in service.items():
        assert [i for i, _ in batch[u]] == [i for i, _ in want], u  # item for item
        np.testing.assert_allclose([s for _, s in batch[u]], [s for _, s in want], rtol=1e-5, atol=1e-6)


def snapshot_file(evs: list[dict[str, Any]], path: Path) -> Path:
    """What `seqrec snapshot` writes (user_id, item_id, timestamp, event_id, and `type` when some event
    has one, the default type `view` where none was sent), users interleaved."""
    frame = pl.DataFrame(evs, infer_schema_length=None)
    typed = "type" in frame.columns
    cols = [pl.col("timestamp").cast(pl.Float64), "event_id", *([pl.col("type").fill_null("view")] if typed else [])]
    frame = frame.with_columns(pl.col("event_id").fill_null(pl.col("user_id") + "-d")).select(
        "user_id", "item_id", *cols
    )
    frame.sample(fraction=1.0, shuffle=True, seed=1).write_parquet(path)
    return path


@pytest.mark.parametrize("params", [{}, {"filter": FILTER}, {"exclude_seen": False}], ids=["plain", "filter", "seen"])
def test_batch_equals_get_recommend(served: Any, bundle: Path, tmp_path: Path, params: dict[str, Any]) -> None:
    c, settings, evs, dislikes = served
    users = sorted({e["user_id"] for e in evs})
    assert len(users) == USERS
    service = answers(c, users, **params)
    assert any(len(v) == 10 for v in service.values())
    opts = {"filter": params.get("filter"), "exclude_seen": params.get("exclude_seen", True)}
    from_redis = recommend_batch(
        bundle,
        settings.redis_url or "",
        tmp_path / "redis.parquet",
        k=10,
        settings=settings,
        workers=1,
        progress=None,
        **opts,
    )
    assert from_redis.users == USERS and from_redis.popularity == len(range(0, USERS, 97))
    same(lists(from_redis.path), service)
    # The snapshot's typed rows: a dislike is not history and its item never comes back, as in the store.
    snap = snapshot_file(evs + dislikes, tmp_path / "snapshot.parquet")
    from_file = recommend_batch(
        bundle,
        str(snap),
        tmp_path / "file.parquet",
        k=10,
        settings=settings,
        workers=2,
        chunk=128,
        progress=None,
        **opts,
    )
    assert from_file.workers == 2 and from_file.users == USERS
    by_file = lists(from_file.path)
    same(by_file, service)
    for d in dislikes:
        assert d["item_id"] not in [i for i, _ in by_file[d["user_id"]]], d


def test_filter_keeps_only_eligible(served: Any, bundle: Path, tmp_path: Path) -> None:
    c, settings, _, _ = served
    got = recommend_batch(
        bundle,
        settings.redis_url or "",
        tmp_path / "f.parquet",
        k=10,
        filter=FILTER,
        settings=settings,
        workers=1,
        progress=None,
    )
    df = pl.read_parquet(got.path)
    rows = [c.get(f"/catalog/items/{i}").json() for i in df["item_id"].unique().to_list()]
    assert rows and all(r["category"] == "even" and r["price"] < 60 and r["available"] for r in rows)


def test_users_subset_and_errors(served: Any, bundle: Path, tmp_path: Path) -> None:
    _, settings, evs, _ = served
    snap = snapshot_file(evs, tmp_path / "s.parquet")
    pick = ["u1", "u2", "nobody"]
    got = recommend_batch(
        bundle, str(snap), tmp_path / "sub.parquet", k=5, users=pick, settings=settings, workers=1, progress=None
    )
    assert got.users == 2 and set(pl.read_parquet(got.path)["user_id"]) == {"u1", "u2"}
    with pytest.raises(DatasetError, match="k must be between 1 and"):
        recommend_batch(bundle, str(snap), tmp_path / "x.parquet", k=0, settings=settings, progress=None)
    with pytest.raises(DatasetError, match="no such snapshot file"):
        recommend_batch(
            bundle, str(tmp_path / "gone.parquet"), tmp_path / "x.parquet", settings=settings, progress=None
        )
    assert not (tmp_path / "x.parquet").exists()


def test_progress_line() -> None:
    import io

    buf = io.StringIO()
    p = Progress(1000, buf, every_s=0.0)
    p.add(250)
    p.add(750, final=True)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("users 250/1,000 (25.0%)") and "users/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("users 1,000/1,000 (100.0%)") and "ETA" not in lines[-1]


def test_dataset_source_reads_whole_sequences(ml100k: SeqData) -> None:
    """A prepared dataset's users with every event, the held-out tail included, oldest first."""
    from training.batch_recommend import open_source

    total, it = open_source("ml-100k")
    got = list(it)
    assert total == len(got) == ml100k.num_users
    for u in (0, 17, ml100k.num_users - 1):
        h = got[u]
        assert h.user_id == ml100k.user_ids[u]
        assert list(h.items) == [ml100k.item_ids[i - 1] for i in ml100k.sequence(u)]
        assert h.times is not None and list(h.times) == sorted(h.times)
    _, some = open_source("ml-100k", users={ml100k.user_ids[3]})
    assert [h.user_id for h in some] == [ml100k.user_ids[3]]
    with pytest.raises(DatasetError):
        open_source("no-such-dataset")


def test_the_command_writes_the_same_lists(served: Any, bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    c, settings, evs, dislikes = served
    snap = snapshot_file(evs + dislikes, tmp_path / "snapshot.parquet")
    out = tmp_path / "cli.parquet"
    args = ["recommend", str(bundle), "--from", str(snap), "--out", str(out), "--k", "10", "--workers", "1"]
    args += ["--max-history", str(settings.max_history), "--filter", FILTER]
    if settings.redis_url:
        args += ["--redis-url", settings.redis_url, "--key-prefix", settings.key_prefix]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    users = sorted({e["user_id"] for e in evs})[:50]
    service = answers(c, users, filter=FILTER)
    same({u: v for u, v in lists(out).items() if u in service}, service)
    bad = CliRunner().invoke(app, [*args[:5], str(tmp_path / "x.parquet"), "--filter", "price <"])
    assert bad.exit_code == 2 and "found the end of the filter" in bad.output


@pytest.mark.parametrize("source", ["window", "log"])
def test_store_snapshots_equal_get_recommend(served: Any, bundle: Path, tmp_path: Path, source: str) -> None:
    """`seqrec snapshot` of the same Redis (the windows, or the event log with every event) as the
    source: the same lists as GET /recommend for every user, the dislikes' items left out."""
    from training.snapshot import connect, snapshot, snapshot_log

    c, settings, evs, dislikes = served
    users = sorted({e["user_id"] for e in evs})
    client = connect(settings.redis_url or "")
    try:
        write = snapshot if source == "window" else snapshot_log
        snap = write(client, tmp_path / f"{source}.parquet", prefix=settings.key_prefix).path
    finally:
        client.close()
    frame = pl.read_parquet(snap)
    assert (frame["type"] == "dislike").sum() == len(dislikes)  # the typed rows the batch must read
    got = recommend_batch(bundle, str(snap), tmp_path / "lists.parquet", k=10, settings=settings, progress=None)
    assert got.users == USERS
    same(lists(got.path), answers(c, users))


def test_snapshot_rows_read_as_the_store_reads_them(bundle: Path, tmp_path: Path) -> None:
    """Each typed row as the store took it: a negative event holds a place in the window but is not
    history; its item (and that of a SEQREC_EXCLUDE_TYPES type) is excluded even when older than the
    window, newest time kept, the last max_excluded items; an event without a type is the default."""
    from training.batch_recommend import file_histories, open_source

    rows = [  # user, item, time, type
        ("a", "i1", 1, "view"),
        ("a", "i9", 2, "dislike"),  # older than the window, still excluded
        ("a", "i2", 3, None),
        ("a", "i3", 4, "cart"),
        ("a", "i8", 5, "dislike"),  # in the window: takes a place, not read
        ("a", "i4", 6, "view"),
        ("a", "i9", 7, "dislike"),  # disliked again: newest time kept
        ("a", "i7", 3.5, "dislike"),
        ("b", "i5", 1, "dislike"),  # only a dislike: no history, one excluded item
    ]
    path = tmp_path / "typed.parquet"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "type"], orient="row").write_parquet(path)
    settings = Settings(bundles=[bundle], max_history=4, max_excluded=2)
    total, it = open_source(str(path), settings=settings)
    got = {h.user_id: h for h in it}
    assert total == 2
    assert list(got["a"].items) == ["i3", "i4"] and list(got["a"].times or []) == [4.0, 6.0]
    assert list(got["a"].excluded) == ["i8", "i9"]  # by newest time: i7 (3.5) trimmed at max_excluded
    assert list(got["b"].items) == [] and list(got["b"].excluded) == ["i5"]
    # SEQREC_EXCLUDE_TYPES a type list: its items are excluded too; the seen items no longer are.
    purchase = Settings(bundles=[bundle], exclude_types=["cart"], max_history=4)
    _, it = open_source(str(path), settings=purchase)
    assert set(next(iter(it)).excluded) == {"i3", "i7", "i8", "i9"}
    # No type column: every event of the default type, nothing excluded.
    plain = tmp_path / "plain.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "type"], orient="row").drop("type").write_csv(plain)
    _, it = file_histories(plain, types=None, max_history=None)
    assert [len(h.items) for h in it] == [8, 1]
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"user_id": ["a"], "item_id": ["i1"], "timestamp": [1.0], "type": ["rating"]}).write_parquet(bad)
    with pytest.raises(DatasetError, match="'rating' not among SEQREC_EVENT_TYPES"):
        open_source(str(bad), settings=settings)


@pytest.mark.parametrize("k", [10, 117])
def test_ties_rank_as_the_service(bundle: Path, data: SeqData, k: int) -> None:
    """Items with one vector score alike for every user: such rows (and rows with fewer than k + 1
    candidates, k = 117 of 120 items) are ranked by GET /recommend's own code, so ties come out in
    its order; every list equals `rank_model`'s for the same history, item for item."""
    from app.bundles.index import ExactIndex
    from app.serving.batch import BatchLists, History, open_bundle
    from app.serving.recommend import rank_model

    b = open_bundle(bundle)
    assert isinstance(b.index, ExactIndex)
    table = b.index.table
    table[10:20] = table[9]  # ten items tied with an eleventh, whatever the user
    batch = BatchLists(b, k, max_history=MAX_HISTORY)
    assert batch.exact
    histories = [
        History(user, [data.item_ids[i - 1] for i in data.sequence(u)]) for u, user in enumerate(data.user_ids[:300])
    ]
    got = batch.lists(histories)
    ends = np.cumsum(got.counts)
    tied = 0
    for n, h in enumerate(histories):
        seen = b.encode(list(h.items[-MAX_HISTORY:]))
        want, scores, _ = rank_model(b, b.user_vectors([seen]), k, seen, True)
        mine = got.labels[ends[n] - got.counts[n] : ends[n]]
        assert mine.tolist() == want.tolist(), h.user_id
        np.testing.assert_allclose(got.score[ends[n] - got.counts[n] : ends[n]], scores, rtol=1e-5, atol=1e-6)
        tied += bool(np.isin(want, np.arange(10, 21)).sum() > 1)
    assert k == 117 or tied > 0  # some lists hold tied items
