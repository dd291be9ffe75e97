"""Prepare at scale: the polars path equals the numpy one, time cuts, the memory check, the folder cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from training.data import DatasetError, preprocess, registry
from training.data import memory as memory_mod
from training.data.files import FileOptions, duplicate_rows, read_files, time_bound
from training.data.preprocess import _counts, build_sequences, build_sequences_frame, encode_frame
from training.data.registry import load_seqdata, prepare_files, save_seqdata


def _log(tmp_path: Path, name: str, rows: list[tuple], header: str | None = None) -> Path:
    path = tmp_path / name
    lines = [header or "user_id,item_id,timestamp", *(",".join(str(v) for v in r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _walk_rows(n_users: int, n_items: int, seed: int, ids: str = "text") -> list[tuple]:
    """Users of 1..14 events over a skewed catalogue, times with ties, repeats, some sessions."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        user = {"text": f"cust-{u}", "numeric": f"{u:03d}" if u % 3 else str(u), "unicode": f"kundé-{u}"}[ids]
        t = 1_700_000_000 + int(rng.integers(10_000))
        for _ in range(int(rng.integers(1, 15))):
            item = int(rng.zipf(1.4)) % n_items
            t += int(rng.integers(0, 3)) * 60  # a third of the steps tie with the event before
            rows.append((user, f"{item:04d}" if ids == "numeric" else f"SKU-{item}", t, f"s{t // 3600}"))
    order = rng.permutation(len(rows))  # a log is not sorted by user
    return [rows[k] for k in order]


LOGS = {
    "text ids, ties": dict(ids="text"),
    "numeric ids with leading zeros": dict(ids="numeric"),
    "non-ASCII ids": dict(ids="unicode"),
}


def _reference(res, opts: FileOptions, name: str):
    """The numpy path as it was: Interactions (object arrays) -> build_sequences."""
    report: list = []
    data = build_sequences(res.inter, name, opts.user_core, opts.item_core, opts.min_len, report=report)
    return data, report


@pytest.mark.parametrize("kind", list(LOGS))
@pytest.mark.parametrize("cores", [(5, 5, 3), (2, 3, 4), (1, 1, 1)])
@pytest.mark.parametrize("sessions", [False, True])
def test_the_frame_path_builds_the_same_data_as_the_numpy_path(tmp_path: Path, kind, cores, sessions) -> None:
    rows = _walk_rows(120, 60, seed=len(kind) + cores[0], **LOGS[kind])
    rows += rows[:25]  # exact repeats of earlier rows
    header = "user_id,item_id,timestamp,session_id"
    path = _log(tmp_path, "log.csv", rows if sessions else [r[:3] for r in rows], header if sessions else None)
    opts = FileOptions(user_core=cores[0], item_core=cores[1], min_len=cores[2])
    res = read_files([path], opts)
    want, want_report = _reference(res, opts, "x")
    report: list = []
    got = build_sequences_frame(res.frame, "x", *cores, report=report)
    assert got.fingerprint() == want.fingerprint()
    assert (got.user_ids, got.item_ids, got.session_ids) == (want.user_ids, want.item_ids, want.session_ids)
    assert np.array_equal(got.timestamps, want.timestamps) and np.array_equal(got.offsets, want.offsets)
    assert report == want_report
    inter = res.inter
    assert encode_frame(res.frame).counts() == _counts(inter.users, inter.items, inter.sessions)


def test_a_k_core_cascade_and_untimed_logs_match_too() -> None:
    # Dropping user c (one row) leaves item z with one row, which then drops user b.
    users = ["a", "a", "b", "b", "c", "a", "d", "d"]
    items = ["x", "y", "x", "z", "z", "w", "x", "y"]
    frame = pl.DataFrame({"user": users, "item": items})
    from training.data.readers import Interactions

    want = build_sequences(Interactions(np.array(users, object), np.array(items, object), None), "c", 2, 2)
    got = build_sequences_frame(frame, "c", 2, 2)
    assert got.fingerprint() == want.fingerprint() and got.user_ids == ["a", "d"] == want.user_ids


def test_numeric_ids_sort_by_value_even_beyond_64_bits() -> None:
    ids = ["10", "9", "007", "7", "99999999999999999999", "+8"]
    frame = pl.DataFrame({"user": ["u"] * len(ids), "item": ids})
    from training.data.readers import Interactions

    want = build_sequences(Interactions(np.array(["u"] * 6, object), np.array(ids, object), None), "n")
    got = build_sequences_frame(frame, "n")
    assert got.item_ids == want.item_ids == ["007", "7", "+8", "9", "10", "99999999999999999999"]


def test_more_items_than_int32_indices_hold_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(preprocess, "INDEX_LIMIT", 2)
    frame = pl.DataFrame({"user": ["u", "u", "u"], "item": ["a", "b", "c"]})
    with pytest.raises(DatasetError, match="3 distinct items; item indices are 32-bit, so at most 2"):
        build_sequences_frame(frame, "big")


def test_duplicate_rows_counts_exactly() -> None:
    df = pl.DataFrame({"a": ["x", "x", "y", "x", "z"], "b": [1, 1, 2, 1, 2]})
    assert duplicate_rows(df, ["a", "b"]) == (3, 2)  # three rows of (x, 1): two repeat the first
    assert duplicate_rows(df, ["b"]) == (5, 3)
    assert duplicate_rows(df.head(1), ["a"]) == (0, 0)


# --------------------------------------------------------------------------- time cuts


def test_since_is_inclusive_until_exclusive_in_iso_or_epoch(tmp_path: Path) -> None:
    day = 86400
    t0 = 1_767_225_600  # 2026-01-01
    rows = [(f"u{u}", f"i{(u + k) % 6}", t0 + k * day) for u in range(12) for k in range(6)]
    path = _log(tmp_path, "log.csv", rows)
    opts = FileOptions(user_core=1, item_core=1, min_len=1, since="2026-01-02", until=str(t0 + 4 * day))
    res = read_files([path], opts)
    assert sorted(set(res.frame["t"].to_list())) == [t0 + day, t0 + 2 * day, t0 + 3 * day]
    assert ("outside --since/--until", 36) in res.steps
    assert any("dropped 36 rows outside --since 2026-01-02 and --until" in n for n in res.notes)
    data = prepare_files([path], opts, cache_dir=tmp_path / "c")
    assert data.num_interactions == 36 and data.timestamps.min() == t0 + day
    assert any(s["step"] == "outside --since/--until" for s in data.meta["report"])
    # The cut is part of the recipe: another window is another dataset.
    assert data.meta["source"]["options"]["since"] == "2026-01-02"
    assert "since" not in FileOptions().to_dict()  # uncut logs keep their cache keys


def test_time_cuts_refuse_what_cannot_work(tmp_path: Path) -> None:
    path = _log(tmp_path, "log.csv", [("u1", "i1", 100), ("u1", "i2", 200)])
    with pytest.raises(DatasetError, match="--since 'yesterday' is not a time"):
        FileOptions(since="yesterday").check()
    with pytest.raises(DatasetError, match="is not before --until"):
        FileOptions(since="2026-02-01", until="2026-01-01").check()
    with pytest.raises(DatasetError, match=r"no event left to prepare between --since 2030-01-01"):
        read_files([path], FileOptions(since="2030-01-01"))
    untimed = _log(tmp_path, "untimed.csv", [("u1", "i1"), ("u1", "i2")], "user_id,item_id")
    with pytest.raises(DatasetError, match="no time column; map one with --time-col"):
        read_files([untimed], FileOptions(until="2026-01-01"))
    assert time_bound("2026-01-01T01:00:00+01:00", "--since") == time_bound("2026-01-01", "--since")


# --------------------------------------------------------------------------- bad input


def test_a_log_too_large_for_memory_is_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    rows = [(f"u{u}", f"i{k}", 1000 + k) for u in range(50) for k in range(8)]
    path = _log(tmp_path, "log.csv", rows)
    monkeypatch.setattr(memory_mod, "available_bytes", lambda: 1000)
    with pytest.raises(
        DatasetError, match=r"~\d[\d,]* events; preparing them needs ~[\d.]+ MiB .* has 0.0 MiB available"
    ) as e:
        prepare_files([path], FileOptions(), cache_dir=tmp_path / "c")
    assert "--since/--until cut it by time" in str(e.value) and "--no-memory-check" in str(e.value)
    assert prepare_files([path], FileOptions(), cache_dir=tmp_path / "c", memory_check=False).num_users == 50


def test_the_memory_estimate_counts_parquet_rows_and_estimates_csv(tmp_path: Path) -> None:
    rows = [(f"user-{u}", f"item-{k}", 1_700_000_000 + k) for u in range(3000) for k in range(10)]
    csv = _log(tmp_path, "log.csv", rows)
    pq = tmp_path / "log.parquet"
    pl.read_csv(csv).write_parquet(pq)
    assert memory_mod.estimate_events(pq) == 30_000
    assert 25_000 < memory_mod.estimate_events(csv) < 36_000
    need = memory_mod.check_memory([pq], available=10**12)
    assert need == 30_000 * memory_mod.BYTES_PER_EVENT


def test_a_catalogue_of_one_item_is_refused(tmp_path: Path) -> None:
    path = _log(tmp_path, "log.csv", [(f"u{u}", "only", 1000 + k) for u in range(6) for k in range(5)])
    with pytest.raises(DatasetError, match="one item \\('only'\\) is left after the filters: there is nothing to rank"):
        prepare_files([path], FileOptions(), cache_dir=tmp_path / "c")


def test_an_empty_log_is_refused(tmp_path: Path) -> None:
    path = _log(tmp_path, "log.csv", [])
    with pytest.raises(DatasetError, match="no rows, only the header"):
        prepare_files([path], FileOptions(), cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------- the folder cache


def test_a_folder_cache_is_memory_mapped_and_replaced_whole(tmp_path: Path) -> None:
    rows = _walk_rows(80, 40, seed=3)
    path = _log(tmp_path, "log.csv", [r[:3] for r in rows])
    data = prepare_files([path], FileOptions(user_core=2, item_core=2), cache_dir=tmp_path / "c")
    folder = tmp_path / "folder"
    save_seqdata(data, folder)
    back = load_seqdata(folder)
    assert isinstance(back.items, np.memmap) and not back.items.flags.writeable
    assert back.fingerprint() == data.fingerprint()
    assert (back.user_ids, back.item_ids, back.meta) == (
        data.user_ids,
        data.item_ids,
        json.loads(json.dumps(data.meta)),
    )
    assert np.array_equal(back.timestamps, data.timestamps)
    assert sorted(p.name for p in folder.iterdir()) == [
        "item_ids.parquet",
        "items.npy",
        "meta.json",
        "offsets.npy",
        "timestamps.npy",
        "user_ids.parquet",
    ]
    smaller = preprocess.drop_short(data, 6)
    save_seqdata(smaller, folder)  # over the old one: no leftovers, no temporary folders
    assert load_seqdata(folder).num_users == smaller.num_users < data.num_users
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_leaves_the_old_folder(tmp_path: Path, monkeypatch) -> None:
    rows = _walk_rows(40, 20, seed=4)
    data = prepare_files([_log(tmp_path, "log.csv", [r[:3] for r in rows])], FileOptions(), cache_dir=tmp_path / "c")
    folder = tmp_path / "folder"
    save_seqdata(data, folder)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_seqdata(data, folder)
    monkeypatch.undo()
    assert load_seqdata(folder).fingerprint() == data.fingerprint()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_large_prepared_data_is_cached_as_a_folder(tmp_path: Path, monkeypatch) -> None:
    rows = _walk_rows(60, 30, seed=5)
    path = _log(tmp_path, "log.csv", [r[:3] for r in rows])
    cache = tmp_path / "c"
    small = prepare_files([path], FileOptions(), name="shop", cache_dir=cache)
    assert (cache / "shop.v2.npz").is_file()
    monkeypatch.setattr(registry, "LARGE_EVENTS", 1)
    big = prepare_files([path], FileOptions(), name="shop", cache_dir=cache, force=True)
    assert (cache / "shop.v2" / "items.npy").is_file() and not (cache / "shop.v2.npz").exists()
    again = prepare_files([path], FileOptions(), name="shop", cache_dir=cache)  # from the folder
    assert isinstance(again.items, np.memmap)
    assert again.fingerprint() == big.fingerprint() == small.fingerprint()
    assert registry.load_dataset("shop", cache_dir=cache).fingerprint() == small.fingerprint()


def test_event_types_come_out_the_same_on_both_paths(tmp_path: Path) -> None:
    rows = _walk_rows(90, 40, seed=6)
    kinds = ["view", "like", "dislike"]
    typed = [(*r[:3], kinds[k % 3]) for k, r in enumerate(rows)]
    path = _log(tmp_path, "log.csv", typed, "user_id,item_id,timestamp,kind")
    for declared in (None, ("view", "like", "dislike")):
        opts = FileOptions(user_core=2, item_core=2, type_col="kind", event_types=declared)
        res = read_files([path], opts)
        want, want_report = _reference(res, opts, "t")
        report: list = []
        got = build_sequences_frame(res.frame, "t", 2, 2, 3, report=report, type_names=res.type_names)
        assert got.fingerprint() == want.fingerprint() and got.type_names == want.type_names
        assert np.array_equal(got.types, want.types) and report == want_report
