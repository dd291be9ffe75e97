"""Batch lists (training/batch_recommend.py) equal what GET /recommend answers for the same history:
1,000 users stored through the API in a private Redis, their lists read back one request at a time,
and the batch run over the same Redis windows and over a snapshot file of the same events, with and
without a filter (the catalogue in that Redis), seen items excluded or not."""

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
from tests.support.data import synthetic_seqdata
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
        redis_timeout=5.0,  # a loaded test machine must not turn reads into store-unavailable answers
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
        yield c, settings, evs, {d["user_id"] for d in dislikes}


def answers(c: TestClient, users: list[str], **params: Any) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for u in users:
        r = c.get(f"/recommend/{u}", params={"k": 10, **params})
        assert r.status_code == 200, r.text
        assert r.json()["fallback"] != "store_unavailable", u  # the history was read
        out[u] = [(i["item_id"], i["score"]) for i in r.json()["items"]]
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
    """What `seqrec snapshot` writes (user_id, item_id, timestamp, event_id), users interleaved."""
    frame = pl.DataFrame(evs).select("user_id", "item_id", pl.col("timestamp").cast(pl.Float64), "event_id")
    frame.sample(fraction=1.0, shuffle=True, seed=1).write_parquet(path)
    return path


@pytest.mark.parametrize("params", [{}, {"filter": FILTER}, {"exclude_seen": False}], ids=["plain", "filter", "seen"])
def test_batch_equals_get_recommend(served: Any, bundle: Path, tmp_path: Path, params: dict[str, Any]) -> None:
    c, settings, evs, disliked = served
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
    snap = snapshot_file(evs, tmp_path / "snapshot.parquet")
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
    assert from_file.workers == 2
    # A snapshot file holds the events, not the exclusion sets: equal for the users without a dislike.
    by_file = lists(from_file.path)
    same(
        {u: v for u, v in by_file.items() if u not in disliked}, {u: v for u, v in service.items() if u not in disliked}
    )


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

    c, settings, evs, disliked = served
    snap = snapshot_file(evs, tmp_path / "snapshot.parquet")
    out = tmp_path / "cli.parquet"
    args = ["recommend", str(bundle), "--from", str(snap), "--out", str(out), "--k", "10", "--workers", "1"]
    args += ["--max-history", str(settings.max_history), "--filter", FILTER]
    if settings.redis_url:
        args += ["--redis-url", settings.redis_url, "--key-prefix", settings.key_prefix]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    users = sorted({e["user_id"] for e in evs} - set(disliked))[:50]
    service = answers(c, users, filter=FILTER)
    same({u: v for u, v in lists(out).items() if u in service}, service)
    bad = CliRunner().invoke(app, [*args[:5], str(tmp_path / "x.parquet"), "--filter", "price <"])
    assert bad.exit_code == 2 and "found the end of the filter" in bad.output
