from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import DatasetError, leave_one_out, prepare, prepare_file, to_sessions
from training.data.preprocess import build_sequences, k_core, split_at_largest_gap, split_by_gap
from training.data.readers import Interactions, read_movielens_dat, read_sasrec
from training.data.registry import item_text, load_seqdata, save_seqdata


def test_ml1m_matches_published_counts(ml1m) -> None:
    assert (ml1m.num_users, ml1m.num_items, ml1m.num_interactions) == (6040, 3416, 999611)
    # Ids stay aligned with the published file: index i is external id "i".
    assert ml1m.item_ids[:3] == ["1", "2", "3"]
    assert ml1m.sequence(0)[:3].tolist() == [1, 2, 3]


def test_ml100k_is_5core_and_time_ordered(ml100k) -> None:
    lens = np.diff(ml100k.offsets)
    assert lens.min() >= 5
    counts = np.bincount(ml100k.items, minlength=ml100k.num_items + 1)[1:]
    assert counts.min() >= 5
    for u in range(0, ml100k.num_users, 50):
        ts = ml100k.times(u)
        assert np.all(np.diff(ts) >= 0)


def test_office_and_beauty_prepare(data_dir: Path, cache_dir: Path) -> None:
    office = prepare("office", data_dir, cache_dir)
    assert (office.num_users, office.num_items, office.num_interactions) == (4905, 2420, 53258)
    text = item_text("office", data_dir)
    assert len(text) == 2420 and all(text.values())
    beauty = prepare("beauty", data_dir, cache_dir)
    assert (beauty.num_users, beauty.num_items) == (40226, 54542)


def test_item_text_ml1m_joins_through_mapping(data_dir: Path) -> None:
    text = item_text("ml-1m", data_dir)
    # SASRec id 3 is original MovieLens id 356 (Forrest Gump).
    assert text["3"].startswith("Forrest Gump (1994)")
    assert len(text) == 3416


def test_leave_one_out_has_no_leak(ml1m) -> None:
    s = leave_one_out(ml1m)
    seq = ml1m.sequence(0)
    assert s.train[0].tolist() == seq[:-2].tolist()
    assert s.valid_target[0] == seq[-2] and s.test_target[0] == seq[-1]
    assert s.test_hist[0].tolist() == seq[:-1].tolist()
    assert len(s.train[0]) == len(seq) - 2


def test_cache_roundtrip(ml100k, tmp_path: Path) -> None:
    save_seqdata(ml100k, tmp_path / "x.npz")
    back = load_seqdata(tmp_path / "x.npz")
    assert back.fingerprint() == ml100k.fingerprint()
    assert back.item_ids == ml100k.item_ids
    assert np.array_equal(back.timestamps, ml100k.timestamps)


def test_k_core_is_iterative() -> None:
    # Removing user c (1 row) drops item z below 2, which then drops user b below 2.
    users = np.array(["a", "a", "b", "b", "c", "a", "d", "d"], dtype=object)
    items = np.array(["x", "y", "x", "z", "z", "w", "x", "y"], dtype=object)
    keep = k_core(users, items, 2, 2)
    kept = set(zip(users[keep], items[keep], strict=True))
    assert kept == {("a", "x"), ("a", "y"), ("d", "x"), ("d", "y")}


def test_stable_time_order_on_ties() -> None:
    inter = Interactions(
        np.array(["u"] * 4, dtype=object),
        np.array(["3", "1", "2", "4"], dtype=object),
        np.array([5, 1, 5, 0]),
    )
    data = build_sequences(inter, "t")
    # time order 0,1,5,5; the two at t=5 keep file order (3 before 2)
    assert [data.item_ids[i - 1] for i in data.sequence(0)] == ["4", "1", "3", "2"]


def test_session_rules() -> None:
    ts = np.array([0, 10, 20, 5000, 5010, 20000])
    assert [(s.start, s.stop) for s in split_by_gap(ts, 1800)] == [(0, 3), (3, 5), (5, 6)]
    pieces = split_at_largest_gap(np.array([0, 1, 2, 100, 101, 102, 500, 501]), 3)
    assert [(s.start, s.stop) for s in pieces] == [(0, 3), (3, 6), (6, 8)]
    assert all(s.stop - s.start <= 4 for s in split_at_largest_gap(np.arange(17), 4))


def test_sessions_from_real_timestamps(ml100k) -> None:
    sess = to_sessions(ml100k, "gap", gap_seconds=1800)
    assert sess.num_users > ml100k.num_users
    for u in range(0, sess.num_users, 97):
        assert np.diff(sess.times(u)).max(initial=0) <= 1800
    capped = to_sessions(ml100k, "largest_gap", max_len=20, min_len=1)
    assert np.diff(capped.offsets).max() <= 20
    assert capped.num_interactions == ml100k.num_interactions


def test_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\n1 3\n1 2 3\n")
    with pytest.raises(DatasetError, match=r"bad.txt:3"):
        read_sasrec(bad)
    dat = tmp_path / "r.dat"
    dat.write_text("1::2::5::978300760\n1::3::4::notatime\n")
    with pytest.raises(DatasetError, match=r"r.dat:2"):
        read_movielens_dat(dat)
    with pytest.raises(DatasetError, match="not found"):
        read_sasrec(tmp_path / "missing.txt")


def test_generic_file_with_iso_timestamps(tmp_path: Path) -> None:
    rows = ["user_id,item_id,timestamp"]
    for u in range(6):
        for i in range(6):
            rows.append(f"u{u},item{(u + i) % 7},2024-01-0{1 + i}T10:00:00Z")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(rows) + "\n")
    data = prepare_file(path, cache_dir=tmp_path / "cache", k_core=2)
    assert data.num_users == 6
    assert data.timestamps is not None and np.all(np.diff(data.times(0)) > 0)
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item\nu1,i1\n")
    with pytest.raises(DatasetError, match=r"missing item column 'item_id'"):
        prepare_file(bad, cache_dir=tmp_path / "cache")


def test_min_len_leaves_no_item_without_events() -> None:
    # User "short" is the only one with item "only-short"; --min-len 3 drops the user, so the item
    # has no event left: it must leave the catalogue (else it is ranked in evaluation and exported).
    users = ["a"] * 4 + ["b"] * 4 + ["short"] * 2
    items = ["x", "y", "z", "x", "y", "z", "x", "w", "only-short", "x"]
    inter = Interactions(np.array(users, dtype=object), np.array(items, dtype=object), np.arange(10))
    report: list = []
    data = build_sequences(inter, "t", min_len=3, report=report)
    assert data.user_ids == ["a", "b"]
    assert data.item_ids == ["w", "x", "y", "z"]
    assert sorted(np.unique(data.items).tolist()) == list(range(1, data.num_items + 1))
    assert [data.item_ids[i - 1] for i in data.sequence(1)] == ["y", "z", "x", "w"]
    assert report[-1]["after"]["items"] == data.num_items == data.stats()["items"]
