"""The synthetic shop log of benchmarks/scale: its model holds, it is reproducible, and the
plain polars pass the prepare benchmark compares against keeps what seqrec keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.scale import generate
from benchmarks.scale.generate import STEP, Shop, write
from benchmarks.scale.prepare import polars_pass, seqrec_pass


def _shop(tmp_path: Path, events: int = 60_000, items: int = 2000, seed: int = 0, **kw) -> pl.DataFrame:
    path = tmp_path / f"shop-{seed}.parquet"
    assert write(Shop(events, items, seed), path, **kw) == events
    return pl.read_parquet(path)


def test_the_log_has_the_columns_ids_and_size_asked_for(tmp_path: Path) -> None:
    df = _shop(tmp_path, csv=tmp_path / "shop.csv", event_ids=True)
    assert df.columns == ["user_id", "item_id", "timestamp", "event_id"] and df.height == 60_000
    assert df["user_id"].str.contains(r"^u\d{9}$").all() and df["item_id"].str.contains(r"^sku-\d{7}$").all()
    assert df["event_id"].n_unique() == df.height
    assert df["item_id"].n_unique() <= 2000
    csv = pl.read_csv(tmp_path / "shop.csv", schema_overrides={"user_id": pl.String, "item_id": pl.String})
    assert csv.equals(df)
    assert not list(tmp_path.glob("*.parts")) and not list(tmp_path.glob("*.tmp"))


def test_the_same_seed_gives_the_same_log_and_another_seed_another(tmp_path: Path) -> None:
    assert _shop(tmp_path / "a").equals(_shop(tmp_path / "b"))
    assert not _shop(tmp_path / "c", seed=1).equals(_shop(tmp_path / "d"))


def test_times_increase_per_user_and_lengths_and_popularity_are_skewed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(generate, "CHUNK_EVENTS", 20_000)  # several chunks
    df = _shop(tmp_path).with_row_index("r")
    per_user = df.sort("user_id", "timestamp", "r").group_by("user_id", maintain_order=True)
    assert per_user.agg(pl.col("timestamp").diff().min().alias("gap"))["gap"].drop_nulls().min() >= 1
    lens = df.group_by("user_id").len()["len"]
    assert lens.median() <= 12 and lens.max() > 10 * lens.median()  # heavy tail
    counts = df["item_id"].value_counts(sort=True)["count"]
    assert counts.head(20).sum() > 0.15 * df.height  # the top 1% of items: Zipf, not uniform (1%)
    # The sequential signal: the next item is a ring neighbour of the previous one far more
    # often than the neighbours' share of the catalogue (6 of 2000) would give.
    seq = df.sort("user_id", "timestamp", "r").with_columns(pl.col("item_id").str.slice(4).cast(pl.Int64).alias("i"))
    step = seq.select((pl.col("i") - pl.col("i").shift()).over("user_id").alias("d"))["d"].drop_nulls()
    near = ((step.abs() >= 1) & (step.abs() <= STEP)) | (step.abs() >= 2000 - STEP)
    assert near.mean() > 0.4


def test_the_polars_baseline_keeps_what_seqrec_keeps(tmp_path: Path) -> None:
    _shop(tmp_path, events=30_000, items=800)
    path = tmp_path / "shop-0.parquet"
    (tmp_path / "a").mkdir()
    base = polars_pass(path, tmp_path / "a")
    ours = seqrec_pass(path, tmp_path / "b")
    assert base == ours
    offsets = np.load(tmp_path / "a" / "offsets.npy")
    assert offsets[-1] == base["interactions"] and len(offsets) == base["users"] + 1
