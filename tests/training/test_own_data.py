"""A new user's own logs: every file here is written by the test itself, small and synthetic."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.training.test_unisrec_train import tiny_bert  # noqa: F401  (fixture)
from training.cli import app
from training.data import DatasetError, prepare_file, to_sessions
from training.data.files import read_item_text_generic

runner = CliRunner()
# The shop log's own column names, mapped on the command line.
SHOP = ["--user-col", "customer", "--item-col", "product", "--time-col", "ts"]


def _events(n_users: int = 40, per_user: int = 8, n_items: int = 30, seed: int = 0) -> list[tuple[str, str, int]]:
    """(user, item, epoch seconds): every user walks a random stretch of the catalogue."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for k in range(per_user):
            item = (start + k + int(rng.integers(2))) % n_items
            out.append((f"cust-{u:03d}", f"SKU-{item:04d}", 1_700_000_000 + u * 1000 + k * 60))
    return out


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _cli(line: str):
    """Run one command line, as typed in a shell."""
    return runner.invoke(app, shlex.split(line))


def _prep(args: list[str], tmp_path: Path):
    return runner.invoke(app, ["prepare", *args, "--cache-dir", str(tmp_path / "cache")])


# 1 ----------------------------------------------------------------- item text that matches nothing


def test_items_file_that_matches_nothing_is_refused_naming_ids(tmp_path: Path) -> None:
    ev = _events()
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", [f"{u},{i},{t}" for u, i, t in ev])
    items = sorted({i for _, i, _ in ev})
    # The mistake from the field: the items file keyed by integer row numbers, not the log's ids.
    _write(tmp_path / "items.csv", "item_id,title", [f"{k},Product {k}" for k in range(len(items))])
    r = _prep(["--file", str(log), "--items-file", str(tmp_path / "items.csv")], tmp_path)
    assert r.exit_code == 2, r.output
    assert "text for only 0 of" in r.output and "'SKU-" in r.output and "--items-id-col" in r.output
    r = _prep(["--file", str(log), "--items-file", str(tmp_path / "items.csv"), "--allow-missing-text"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "item text: 0 of" in r.output
    # The training path (an items file given to UniSRec directly) runs the same check.
    from training.text import dataset_text

    data = prepare_file(log, cache_dir=tmp_path / "cache", k_core=2)
    with pytest.raises(DatasetError, match="text for only 0 of"):
        dataset_text(data, tmp_path / "items.csv")
    _write(tmp_path / "good.csv", "item_id,title", [f"{i},Product {i}" for i in items])
    assert dataset_text(data, tmp_path / "good.csv")[items[0]] == f"Product {items[0]}"


# 2 ----------------------------------------------------------------- filter options and their report


def test_filters_are_options_and_prepare_reports_each_step(tmp_path: Path) -> None:
    rows = [f"{u},{i},{t}" for u, i, t in _events(per_user=4)]
    rows += ["lonely,SKU-9999,1700000000", "lonely,SKU-0001,1700000060"]  # 2 events; SKU-9999 seen once
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", rows)
    r = _prep(["--file", str(log)], tmp_path)  # defaults 5/5/3: every user has < 5 events
    assert r.exit_code == 2 and "lower --user-core" in r.output
    r = _prep(["--file", str(log), "--user-core", "1", "--item-core", "2", "--min-len", "2"], tmp_path)
    assert r.exit_code == 0, r.output
    from collections import Counter

    seen = Counter(row.split(",")[1] for row in rows)
    kept = [row for row in rows if seen[row.split(",")[1]] >= 2]  # no user core: one pass suffices
    per_user = Counter(row.split(",")[0] for row in kept)
    final = [row for row in kept if per_user[row.split(",")[0]] >= 2]  # "lonely" is down to 1 event
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["interactions"] == len(final) < len(kept) < len(rows)
    assert "1-core users, 2-core items" in r.output and f"{len(rows)} -> {len(kept)}" in r.output
    assert f"{len(kept)} -> {len(final)}" in r.output
    assert "users with >= 2 events" in r.output
    help_text = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--user-core", "--item-core", "--min-len"):
        assert flag in help_text


# 3 ----------------------------------------------------------------- too few evaluation queries


def test_train_refuses_an_empty_validation_set_and_prints_counts(tmp_path: Path) -> None:
    rows = [f"{u},{i},{t}" for u, i, t in _events(n_users=6)]  # 6 users: 6 validation queries
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", rows)
    out = tmp_path / "run"
    r = _prep(["--file", str(log), "--user-core", "1", "--item-core", "1", "--name", "tiny"], tmp_path)
    assert r.exit_code == 0, r.output
    args = ["train", "--model", "gru4rec", "--dataset", "tiny", "--epochs", "1", "--out", str(out)]
    r = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 2, r.output
    assert "6 validation queries, 6 test queries" in r.output and "below the minimum of 10" in r.output
    assert "--min-eval-queries 0" in r.output
    assert not (out / "best.pt").exists()  # refused before any training


# 4 ----------------------------------------------------------------- own column names and separators


def test_own_column_names_and_semicolon_separator(tmp_path: Path) -> None:
    ev = _events()
    log = _write(tmp_path / "shop.csv", "customer;product;ts", [f"{u};{i};{t}" for u, i, t in ev])
    r = _prep(["--file", str(log)], tmp_path)
    assert r.exit_code == 2
    # The separator was sniffed: the columns are listed one by one, and the flag to use is named.
    assert "columns: ['customer', 'product', 'ts']" in r.output and "--user-col customer" in r.output
    r = _prep(
        ["--file", str(log), *SHOP, "--user-core", "2"],
        tmp_path,
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["users"] == 40
    # `train --file` reads with the standard names and says where the mapping options are.
    r = runner.invoke(app, ["train", "--file", str(log), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 2 and "`seqrec prepare` options" in r.output
    # An explicit --sep wins over sniffing; a wrong one says what the header looked like.
    r = _prep(["--file", str(log), "--sep", ",", "--user-col", "customer"], tmp_path)
    assert r.exit_code == 2 and "--sep ';'" in r.output


# 5 ----------------------------------------------------------------- sessions as a column


def _session_log(tmp_path: Path) -> Path:
    """`session_id;user_id;item_id;timeframe;eventdate`: 60 sessions of 4-6 views, 12 users."""
    rng = np.random.default_rng(1)
    rows = []
    for s in range(60):
        base = int(rng.integers(20))
        for k in range(4 + s % 3):
            rows.append(f"{s};u{s % 12};{100 + (base + k) % 25};{k * 5000};2016-05-{1 + s // 5:02d}")
    return _write(tmp_path / "views.csv", "session_id;user_id;item_id;timeframe;eventdate", rows)


def test_session_column_trains_and_evaluates_with_popularity_baseline(tmp_path: Path) -> None:
    from training.data import FileOptions, prepare_files

    log = _session_log(tmp_path)
    cache = str(tmp_path / "cache")
    filters = "--user-core 1 --item-core 1 --min-len 2"
    r = _cli(f"prepare --file {log} --time-col eventdate {filters} --name views --cache-dir {cache}")
    assert r.exit_code == 0, r.output
    assert "session='session_id'" in r.output
    data = prepare_files(
        [log], FileOptions(time_col="eventdate", user_core=1, item_core=1, min_len=2), "views", Path(cache)
    )
    sess = to_sessions(data, "column")
    assert sess.num_users == 60  # one row per session of the file, not per user
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "train",
            "--model",
            "gru4rec",
            "--dataset",
            "views",
            "--sessions",
            "column",
            "--epochs",
            "1",
            "--session-test-frac",
            "0.2",
            "--out",
            str(out),
            "--cache-dir",
            cache,
            "--set",
            "task.parallel=padded",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(out / "best.pt"), "--popularity-baseline", "--cache-dir", cache])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["protocol"] == "sessions" and res["queries"] > 10
    assert "hr@20" in res["full"] and "hr@20" in res["popularity"]


# 6 ----------------------------------------------------------------- no timestamps


def test_file_without_time_column_uses_row_order(tmp_path: Path) -> None:
    rows = [f"{u},{i}" for u, i, _ in _events()][::-1]  # reversed: row order is not id order
    log = _write(tmp_path / "purchases.csv", "user_id,item_id", rows)
    r = _prep(["--file", str(log), "--user-core", "2", "--item-core", "2"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "no time column" in r.output and "row order" in r.output
    data = prepare_file(log, cache_dir=tmp_path / "cache", k_core=2)
    first_user = [i for u, i in (row.split(",") for row in rows) if u == data.user_ids[0]]
    assert [data.item_ids[k - 1] for k in data.sequence(0)] == first_user
    assert data.timestamps is None


# 7 ----------------------------------------------------------------- messages with file, line, value, advice


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (
            "u1,i1,1700000000\nu1,i2,yesterday\nu1,i3,1700000100\n",
            r"bad.csv:3: 'timestamp' is 'yesterday', not a number",
        ),
        (
            "u1,i1,2024-01-01T10:00:00Z\nu1,i2,2024-01-01T11:00:00Z\nu1,i3,2024-13-40T00:00:00Z\n",
            "bad.csv:4: .*2024-13-40.*ISO-8601",
        ),
        ("", r"no rows, only the header \['user_id', 'item_id', 'timestamp'\]"),
        ("u1,,1700000000\n", r"bad.csv:2: empty item id"),
    ],
)
def test_bad_values_name_file_line_value_and_what_to_do(tmp_path: Path, body: str, expect: str) -> None:
    from training.data import prepare_files

    (tmp_path / "bad.csv").write_text("user_id,item_id,timestamp\n" + body)
    with pytest.raises(DatasetError, match=expect) as err:
        prepare_files([tmp_path / "bad.csv"], cache_dir=tmp_path / "c")
    assert "polars" not in str(err.value) and "strict" not in str(err.value)
    r = _prep(["--file", str(tmp_path / "bad.csv")], tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_fractional_timestamps_order_events(tmp_path: Path) -> None:
    # 0.7 s after and 0.2 s after the same second: truncation would tie them (file order).
    rows = ["u1,late,100.7", "u1,early,100.2", "u1,first,99.9"]
    log = _write(tmp_path / "f.csv", "user_id,item_id,timestamp", rows)
    data = prepare_file(log, cache_dir=tmp_path / "c", k_core=1)
    assert [data.item_ids[k - 1] for k in data.sequence(0)] == ["first", "early", "late"]
    assert data.timestamps is not None and data.timestamps.tolist() == [99, 100, 100]
    assert any("fractional seconds (kept for ordering" in n for n in data.meta["notes"])


# 8 ----------------------------------------------------------------- a consistent CLI


def test_evaluate_finds_the_files_a_checkpoint_was_trained_on(tmp_path: Path) -> None:
    ev = _events(n_users=30)
    log = _write(tmp_path / "shop.csv", "customer,product,ts", [f"{u},{i},{t}" for u, i, t in ev])
    cache = str(tmp_path / "cache")
    r = _cli(f"prepare --file {log} {' '.join(SHOP)} --user-core 2 --item-core 2 --name shop --cache-dir {cache}")
    assert r.exit_code == 0, r.output
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", "--model", "gru4rec", "--dataset", "shop", "--epochs", "1", "--out", str(out), "--cache-dir", cache],
    )
    assert r.exit_code == 0, r.output
    (tmp_path / "cache").rename(tmp_path / "moved")  # no recipe to find: the checkpoint must carry it
    r = runner.invoke(app, ["evaluate", str(out / "best.pt"), "--cache-dir", str(tmp_path / "fresh")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["queries"] == 30


def test_help_names_every_model_and_loss() -> None:
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "240", "TERM": "dumb"}).output
    for word in ("unisrec", "bpr-max", "top1-max"):
        assert word in out


def test_items_file_id_column_is_mappable_and_text_is_composed_as_documented(tmp_path: Path) -> None:
    ev = _events()
    log = _write(tmp_path / "log.csv", "customer,product,ts", [f"{u},{i},{t}" for u, i, t in ev])
    items = sorted({i for _, i, _ in ev})
    _write(tmp_path / "catalogue.csv", "sku,brand,title,price", [f"{i},Acme,Desk lamp {i},9.99" for i in items])
    text = read_item_text_generic(tmp_path / "catalogue.csv", "sku")
    # The service's composition: title, categories, brand, description, space-joined.
    assert text[items[0]] == f"Desk lamp {items[0]} Acme"
    assert "joined by spaces" in (read_item_text_generic.__doc__ or "")
    r = _prep(
        [
            "--file",
            str(log),
            *SHOP,
            "--user-core",
            "2",
            "--items-file",
            str(tmp_path / "catalogue.csv"),
            "--items-id-col",
            "sku",
        ],
        tmp_path,
    )
    assert r.exit_code == 0, r.output
    assert f"item text: {len(items)} of {len(items)} items (100.0%)" in r.output


def test_unisrec_without_item_text_names_the_missing_items_file(tmp_path: Path) -> None:
    from training.text import dataset_text

    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", [f"{u},{i},{t}" for u, i, t in _events()])
    data = prepare_file(log, cache_dir=tmp_path / "c", k_core=2)
    with pytest.raises(DatasetError) as err:
        dataset_text(data)
    msg = str(err.value)
    assert "unknown dataset" not in msg and "--items-file" in msg and "log.csv" in msg


def test_pretrain_takes_files_and_init_says_what_it_loaded(tmp_path: Path, tiny_bert: Path) -> None:  # noqa: F811
    from training.data import FileOptions, prepare_files

    ev = _events()
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", [f"{u},{i},{t}" for u, i, t in ev])
    items = sorted({i for _, i, _ in ev})
    _write(tmp_path / "items.csv", "item_id,title", [f"{i},Lamp number {i}" for i in items])
    cache = str(tmp_path / "cache")
    enc = [
        "--set",
        "model.dim=16",
        "--set",
        "model.max_len=20",
        "--set",
        "model.num_heads=2",
        "--set",
        "model.text_dim=32",
        "--set",
        f"model.text_encoder={tiny_bert}",
    ]
    r = runner.invoke(
        app,
        [
            "pretrain",
            "--datasets",
            "",
            "--file",
            str(log),
            "--items-file",
            str(tmp_path / "items.csv"),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "pt"),
            "--cache-dir",
            cache,
            *enc,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "item text: 30 of 30 items (100.0%)" in r.output
    ckpt = tmp_path / "pt" / "pretrained.pt"
    assert ckpt.is_file()

    from training.train import train

    opts = FileOptions(user_core=2, item_core=2, items_file=str(tmp_path / "items.csv"))
    data = prepare_files([log], opts, cache_dir=tmp_path / "c")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train(
            "unisrec",
            data,
            tmp_path / "ft",
            {"dim": 16, "max_len": 20, "num_heads": 2, "text_dim": 32, "text_encoder": str(tiny_bert)},
            {"epochs": 1, "batch_size": 64, "extra": {"init": str(ckpt)}},
            progress=False,
        )
    assert f"pre-trained tensors (MoE adaptor + transformer) from {ckpt}" in err.getvalue()


def test_prepare_file_cache_key_covers_every_option(tmp_path: Path) -> None:
    rows = [f"{u},{i},{t}" for u, i, t in _events(per_user=3)]
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", rows)
    a = prepare_file(log, cache_dir=tmp_path / "c", k_core=1)
    b = prepare_file(log, cache_dir=tmp_path / "c", k_core=3)
    assert a.num_interactions == len(rows) and b.num_interactions < a.num_interactions
    assert a.name != b.name
    c = prepare_file(log, cache_dir=tmp_path / "c", k_core=1, min_len=2)  # same rows, another option
    assert c.name != a.name and c.meta["source"]["options"]["min_len"] == 2


# several files: an offline log and a snapshot of live events --------------------------------


def test_offline_log_and_snapshot_combine_deduplicated(tmp_path: Path) -> None:
    from training.data import FileOptions, prepare_files

    ev = _events(n_users=20)
    offline = _write(tmp_path / "offline.csv", "customer;product;ts", [f"{u};{i};{t}" for u, i, t in ev[:120]])
    # A `seqrec snapshot` file: user_id, item_id, float timestamp, event_id; it overlaps the
    # offline log by 10 events (the same user, item and time) and repeats one event id.
    snap = ev[110:]
    frame = pl.DataFrame(
        {
            "user_id": [u for u, _, _ in snap] + [snap[-1][0]],
            "item_id": [i for _, i, _ in snap] + [snap[-1][1]],
            "timestamp": [float(t) for _, _, t in snap] + [float(snap[-1][2])],
            "event_id": [f"e{k}" for k in range(len(snap))] + [f"e{len(snap) - 1}"],
        }
    )
    frame.write_parquet(tmp_path / "events.parquet")
    frame.write_csv(tmp_path / "events.csv")
    cache = str(tmp_path / "cache")
    for snapshot in ("events.parquet", "events.csv"):
        r = runner.invoke(
            app,
            [
                "prepare",
                "--file",
                str(offline),
                "--file",
                str(tmp_path / snapshot),
                *SHOP,
                "--user-core",
                "1",
                "--item-core",
                "1",
                "--cache-dir",
                cache,
            ],
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.strip().splitlines()[-1])["interactions"] == len(ev)
        assert f"{len(ev) + 11} -> {len(ev)}" in r.output  # 10 overlapping + 1 repeated event id
        assert "event='event_id'" in r.output
    # Two snapshots with event ids: matched by id, so a re-sent event with another time is one.
    later = frame.with_columns(pl.col("timestamp") + 0.5)
    later.write_parquet(tmp_path / "events2.parquet")
    data = prepare_files(
        [tmp_path / "events.parquet", tmp_path / "events2.parquet"],
        FileOptions(user_core=1, item_core=1, min_len=1),
        cache_dir=tmp_path / "c",
    )
    assert data.num_interactions == len(snap)


def test_headerless_log_names_its_columns_and_combines_with_a_snapshot_csv(tmp_path: Path) -> None:
    from training.data import FileOptions, prepare_files

    ev = _events(n_users=10)
    # MovieLens u.data style: TAB-separated, no header line, a rating between item and time.
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in ev[:60]))
    snap = ["user_id,item_id,timestamp,event_id"] + [f"{u},{i},{t}.0,e{k}" for k, (u, i, t) in enumerate(ev[50:])]
    _write(tmp_path / "snapshot.csv", snap[0], snap[1:])
    opts = FileOptions(columns=("user", "item", "rating", "ts"), user_col="user", item_col="item", time_col="ts")
    data = prepare_files(
        [tmp_path / "u.data", tmp_path / "snapshot.csv"],
        FileOptions(**{**opts.to_dict(), "user_core": 1, "item_core": 1, "min_len": 1}),
        cache_dir=tmp_path / "c",
    )
    assert data.num_interactions == len(ev)  # the 10 events in both files counted once
    (tmp_path / "bad.data").write_text("u1\ti1\t4\t1700000000\nu1\ti2\t4\tsoon\n")
    with pytest.raises(DatasetError, match=r"bad.data:2: 'ts' is 'soon'"):
        prepare_files([tmp_path / "bad.data"], opts, cache_dir=tmp_path / "c")


def test_session_log_without_user_column_makes_each_session_a_user(tmp_path: Path) -> None:
    rows = ["1,2014-04-07T10:51:09Z,214536502", "1,2014-04-07T10:54:09Z,214536500", "2,2014-04-07T13:56:37Z,7"]
    rows += ["2,2014-04-07T13:57:19Z,7", "2,2014-04-07T13:58:37Z,214536502"]
    log = _write(tmp_path / "clicks.csv", "session_id,timestamp,item_id", rows)
    r = _cli(f"prepare --file {log} --user-core 1 --item-core 1 --min-len 2 --name clicks --cache-dir {tmp_path}")
    assert r.exit_code == 0, r.output
    assert "no user column: each session ('session_id') is its own user" in r.output
    from training.data import load_dataset

    sess = to_sessions(load_dataset("clicks", cache_dir=tmp_path), "column")
    assert sess.user_ids == ["1", "2"]
    assert [[sess.item_ids[k - 1] for k in sess.sequence(u)] for u in range(2)] == [
        ["214536502", "214536500"],
        ["7", "7", "214536502"],
    ]


def test_ragged_and_non_utf8_lines_are_named(tmp_path: Path) -> None:
    from training.data import prepare_files

    (tmp_path / "ragged.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2,oops,more\n")
    with pytest.raises(DatasetError, match=r"ragged.csv:3: 5 fields, the header has 3"):
        prepare_files([tmp_path / "ragged.csv"], cache_dir=tmp_path / "c")
    (tmp_path / "latin.csv").write_bytes("user_id,item_id,timestamp\nJosé,café,1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin.csv:2: not UTF-8 .*iconv"):
        prepare_files([tmp_path / "latin.csv"], cache_dir=tmp_path / "c")
