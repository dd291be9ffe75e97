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
    trained = json.loads(r.stdout.strip().splitlines()[-1])
    r = runner.invoke(app, ["evaluate", str(out / "best.pt"), "--popularity-baseline", "--cache-dir", cache])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["protocol"] == "sessions" and res["queries"] > 10
    assert "hr@20" in res["full"] and "hr@20" in res["popularity"]
    # One name for one metric: train prints what evaluate and final.json call it.
    assert trained["test_hr@20"] == pytest.approx(res["full"]["hr@20"]) and "test_recall@20" not in trained


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


# ids the service refuses ---------------------------------------------------------------------------


def _item_log(tmp_path: Path, items: list[str], name: str = "log.csv") -> Path:
    """12 users x 6 events over `items` (each item seen by several users), epoch seconds."""
    rows = []
    for u in range(12):
        for k in range(6):
            item = items[(u + k) % len(items)]
            rows.append(f'u{u:02d},"{item}",{1_700_000_000 + u * 1000 + k * 60}')
    return _write(tmp_path / name, "user_id,item_id,timestamp", rows)


REFUSED = ["https://shop.example/p/00", "cat/sub/P-01", "P-02\u200b", " P-03"]


def test_ids_the_service_refuses_are_refused_with_the_line_and_the_rule(tmp_path: Path) -> None:
    from app.ids import valid_id

    log = _item_log(tmp_path, ["ok-1", *REFUSED, "ok-2"])
    r = _prep(["--file", str(log), "--user-core", "1", "--item-core", "1"], tmp_path)
    assert r.exit_code == 2, r.output
    # The first offending line (user u00's second event), the id, the rule, and what to do.
    assert "log.csv:3: item id 'https://shop.example/p/00' (column 'item_id')" in r.output
    assert "id must not contain '/'" in r.output and "POST /events refuses such ids (422)" in r.output
    assert "4 item ids of this file break it" in r.output and "--fix-ids" in r.output
    for bad in REFUSED:
        assert not valid_id(bad)
    # A user id too, and a Parquet file is named by row.
    pl.DataFrame({"user_id": ["a", "b/c", "a"], "item_id": ["x", "y", "z"]}).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(DatasetError, match=r"e.parquet, row 2: user id 'b/c'"):
        prepare_file(tmp_path / "e.parquet", cache_dir=tmp_path / "c", k_core=1, min_len=1)
    # A placeholder user that breaks the rule is named as such.
    (tmp_path / "na.csv").write_text("user_id,item_id\nN/A,x\nu1,y\n")
    with pytest.raises(DatasetError, match=r"looks like a missing user id: --null-users drop"):
        prepare_file(tmp_path / "na.csv", cache_dir=tmp_path / "c", k_core=1, min_len=1)


def test_fix_ids_maps_refused_ids_reversibly_and_counts_them(tmp_path: Path) -> None:
    from urllib.parse import unquote

    from app.ids import valid_id
    from training.data import FileOptions, prepare_files

    log = _item_log(tmp_path, ["ok-1", *REFUSED, "P-03", "50%", "ok-2"])
    r = _prep(["--file", str(log), "--user-core", "1", "--item-core", "1", "--fix-ids", "--name", "fixed"], tmp_path)
    assert r.exit_code == 0, r.output
    # 5 of 8 item ids change ('50%' too: '%' is encoded so that the mapping can be undone);
    # ' P-03' becomes 'P-03', an id the file already has.
    assert "--fix-ids changed 5 of 8 item ids" in r.output and "1 of them now equal another id" in r.output
    data = prepare_files([log], FileOptions(user_core=1, item_core=1, fix_ids=True), cache_dir=tmp_path / "c")
    assert all(valid_id(i) for i in data.item_ids) and all(valid_id(u) for u in data.user_ids)
    assert sorted(unquote(i) for i in data.item_ids) == sorted(
        ["ok-1", "https://shop.example/p/00", "cat/sub/P-01", "P-02", "P-03", "50%", "ok-2"]
    )
    assert "cat%2Fsub%2FP-01" in data.item_ids and data.num_items == 7
    # An items file keyed by the log's original ids still matches: its ids are mapped alike.
    titles = ["item_id,title"] + [f'"{i}",Title of {k}' for k, i in enumerate(["ok-1", *REFUSED, "50%", "ok-2"])]
    _write(tmp_path / "items.csv", titles[0], titles[1:])
    items = ["--items-file", str(tmp_path / "items.csv")]
    r = _prep(["--file", str(log), "--user-core", "1", "--item-core", "1", "--fix-ids", *items], tmp_path)
    assert r.exit_code == 0 and "item text: 7 of 7 items (100.0%)" in r.output, r.output


def test_ids_that_differ_by_whitespace_or_unicode_form_are_not_split_silently(tmp_path: Path) -> None:
    # 'u1' and 'u1 ' are one customer to a reader: refused by the id rule, not blamed on the k-core.
    rows = [f"u1,i{k % 3},{1_700_000_000 + k}" for k in range(3)]
    rows += [f"u1 ,i{k % 3},{1_700_000_100 + k}" for k in range(3)]
    log = _write(tmp_path / "ws.csv", "user_id,item_id,timestamp", rows)
    r = _prep(["--file", str(log), "--user-core", "5", "--item-core", "1"], tmp_path)
    assert r.exit_code == 2 and "ws.csv:5: user id 'u1 '" in r.output and "whitespace" in r.output
    assert "core filter" not in r.output
    r = _prep(["--file", str(log), "--user-core", "5", "--item-core", "1", "--fix-ids"], tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["users"] == 1
    # 'José' written precomposed and with a combining accent: valid ids, counted and warned about,
    # and the warning travels with the k-core error it explains.
    nfc, nfd = "Jos\u00e9", "Jose\u0301"
    rows = [f"{nfc},i{k},{1_700_000_000 + k}" for k in range(3)] + [f"{nfd},i{k},{1_700_000_100 + k}" for k in range(3)]
    log = _write(tmp_path / "nfc.csv", "user_id,item_id,timestamp", rows)
    r = _prep(["--file", str(log), "--user-core", "1", "--item-core", "1"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "warning: 2 user ids differ from another only by their Unicode normalisation form" in r.output
    r = _prep(["--file", str(log), "--user-core", "5", "--item-core", "1"], tmp_path)
    assert r.exit_code == 2 and "core filter" in r.output and "Unicode normalisation form" in r.output
    r = _prep(["--file", str(log), "--user-core", "5", "--item-core", "1", "--fix-ids"], tmp_path)
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["users"] == 1


# epoch units -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "unit"), [(1000, "milliseconds"), (1_000_000, "microseconds"), (1_000_000_000, "nanoseconds")]
)
def test_epoch_milli_micro_nano_seconds_are_recognised_and_converted(tmp_path: Path, scale: int, unit: str) -> None:
    ev = _events(n_users=10)
    # CSV (numeric strings), and Parquet ints: both in the unit, the second event 1/4 s after the first.
    rows = [f"{u},{i},{t * scale + (scale // 4 if k % 8 == 1 else 0)}" for k, (u, i, t) in enumerate(ev)]
    log = _write(tmp_path / "ms.csv", "user_id,item_id,timestamp", rows)
    data = prepare_file(log, cache_dir=tmp_path / "c", k_core=1)
    assert data.timestamps is not None
    assert data.timestamps.min() == min(t for _, _, t in ev) and data.timestamps.max() == max(t for _, _, t in ev)
    note = next(n for n in data.meta["notes"] if "time from" in n)
    assert f"epoch {unit} (values above 1e11 are not seconds), converted to seconds" in note
    assert "(2023-11-14 to 2023-11-15)" in note
    frame = pl.DataFrame(
        {"user_id": [u for u, _, _ in ev], "item_id": [i for _, i, _ in ev], "ts": [t * scale for _, _, t in ev]}
    )
    frame.write_parquet(tmp_path / "ms.parquet")
    r = _prep(["--file", str(tmp_path / "ms.parquet"), "--time-col", "ts", "--user-core", "1"], tmp_path)
    assert r.exit_code == 0 and f"epoch {unit}" in r.output


def test_time_unit_option_and_mixed_units(tmp_path: Path) -> None:
    from training.data import FileOptions, prepare_files

    # Small numbers that are milliseconds (e.g. since the start of a test run): only the option can say so.
    log = _write(tmp_path / "rel.csv", "user_id,item_id,timestamp", ["u1,a,500", "u1,b,1500", "u1,c,2500"])
    opts = FileOptions(user_core=1, item_core=1, min_len=1, time_unit="ms")
    data = prepare_files([log], opts, cache_dir=tmp_path / "c")
    assert data.timestamps is not None and data.timestamps.tolist() == [0, 1, 2]
    assert "epoch milliseconds (--time-unit)" in data.meta["notes"][1]
    r = _prep(["--file", str(log), "--time-unit", "minutes"], tmp_path)
    assert r.exit_code == 2 and "--time-unit must be one of auto, s, ms, us, ns" in r.output
    # Seconds and milliseconds in one column: refused at the line, not averaged into nonsense.
    mixed = _write(tmp_path / "mixed.csv", "user_id,item_id,timestamp", ["u1,a,1700000000000", "u1,b,1700000060"])
    with pytest.raises(DatasetError, match=r"mixed.csv:3: 'timestamp' is 1700000060.*mixes units"):
        prepare_files([mixed], FileOptions(user_core=1, item_core=1, min_len=1), cache_dir=tmp_path / "c")


# ties: a date-only time column, and a date plus an offset ----------------------------------------


def _shuffled_session_log(tmp_path: Path) -> Path:
    """Sessions of 5 views on one day each; each session's rows NOT in time order in the file."""
    rng = np.random.default_rng(3)
    rows = []
    for s in range(30):
        views = [(k * 20_000 + int(rng.integers(5_000)), f"{200 + (s + k) % 15}") for k in range(5)]
        for k in rng.permutation(5):
            ms, item = views[k]
            rows.append(f"{s};u{s % 6};{item};{ms};2016-05-{1 + s // 3:02d}")
    return _write(tmp_path / "views.csv", "session_id;user_id;item_id;offset_ms;day", rows)


def test_date_only_times_warn_about_ties_and_a_time_offset_orders_events(tmp_path: Path) -> None:
    from training.data import FileOptions, prepare_files

    log = _shuffled_session_log(tmp_path)
    args = ["--file", str(log), "--time-col", "day", "--user-core", "1", "--item-core", "1", "--min-len", "2"]
    r = _prep(args, tmp_path)
    assert r.exit_code == 0, r.output
    assert "warning: 100% of events share their timestamp with another event of the same user" in r.output
    assert "('day' holds dates only)" in r.output and "--time-offset-col COLUMN --time-offset-unit ms" in r.output
    r = _prep([*args, "--time-offset-col", "offset_ms"], tmp_path)
    assert r.exit_code == 2 and "needs its unit: --time-offset-unit s|ms|us|ns" in r.output
    r = _prep([*args, "--time-offset-col", "offset_ms", "--time-offset-unit", "ms"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "time from 'day': ISO-8601 times (2016-05-01 to 2016-05-10) plus 'offset_ms' (milliseconds)" in r.output
    assert "warning" not in r.output
    opts = dict(time_col="day", user_core=1, item_core=1, min_len=2)
    timed = prepare_files([log], FileOptions(**opts, time_offset_col="offset_ms", time_offset_unit="ms"), "t")
    by_day = prepare_files([log], FileOptions(**opts), "d", cache_dir=tmp_path / "c")
    in_order = [to_sessions(d, "column") for d in (timed, by_day)]
    # With the offset every session is in view order; with the day alone, in the file's shuffled order.
    right = [[f"{200 + (s + k) % 15}" for k in range(5)] for s in range(30)]
    got = [[[d.item_ids[i - 1] for i in d.sequence(u)] for u in range(d.num_users)] for d in in_order]
    assert sorted(got[0]) == sorted(right)
    assert sum(a != b for a, b in zip(sorted(got[1]), sorted(right), strict=True)) > 20


# placeholder user ids ----------------------------------------------------------------------------


def _log_with_na_users(tmp_path: Path) -> Path:
    """1,600 rows; 62% of them have the user id 'NA'; 80 sessions of anonymous visitors."""
    rows = []
    for s in range(200):
        user = "NA" if s < 124 else f"u{s}"
        for k in range(8):
            rows.append(f"s{s},{user},i{(s + k) % 40},{1_700_000_000 + s * 10_000 + k * 30}")
    return _write(tmp_path / "na.csv", "session_id,user_id,item_id,timestamp", rows)


def test_placeholder_user_ids_are_warned_about_dropped_or_replaced_by_the_session(tmp_path: Path) -> None:
    log = _log_with_na_users(tmp_path)
    base = ["--file", str(log), "--user-core", "1", "--item-core", "1"]
    r = _prep(base, tmp_path)
    assert r.exit_code == 0, r.output
    assert "warning: user id 'NA' looks like a missing value and holds 992 of 1,600 rows (62%)" in r.output
    assert "--null-users drop" in r.output and "--null-users session" in r.output
    r = _prep([*base, "--null-users", "drop"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "placeholder user ids" in r.output and "1600 -> 608" in r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["users"] == 76
    r = _prep([*base, "--null-users", "session", "--name", "anon"], tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["users"] == 76 + 124  # every anonymous session a user
    from training.data import load_dataset

    assert "session:s0" in load_dataset("anon", cache_dir=tmp_path / "cache").user_ids
    # One id holding a share no person has: warned about, and droppable once named.
    rows = [f"guest,i{k % 40},{1_700_000_000 + k}" for k in range(1200)]
    rows += [f"u{k % 50},i{k % 40},{1_700_000_000 + k}" for k in range(3000)]
    log = _write(tmp_path / "guest.csv", "user_id,item_id,timestamp", rows)
    r = _prep(["--file", str(log)], tmp_path)
    assert r.exit_code == 0 and "warning: user id 'guest' holds 1,200 of 4,200 rows (29%)" in r.output
    r = _prep(["--file", str(log), "--null-user-id", "guest", "--null-users", "drop"], tmp_path)
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["users"] == 50
    assert "warning" not in r.output


# smaller ones ------------------------------------------------------------------------------------


def test_a_truncated_gzip_file_is_named_as_such(tmp_path: Path) -> None:
    import gzip

    body = "user_id,item_id,timestamp\n" + "".join(f"u{k % 50},i{k % 30},{1_700_000_000 + k}\n" for k in range(20000))
    packed = gzip.compress(body.encode())
    (tmp_path / "events.csv.gz").write_bytes(packed[: len(packed) // 2])
    r = _prep(["--file", str(tmp_path / "events.csv.gz")], tmp_path)
    assert r.exit_code == 2
    assert "events.csv.gz: the gzip file is truncated or corrupt" in r.output and "Aborted" not in r.output
    (tmp_path / "plain.csv.gz").write_text(body)  # not gzip at all
    r = _prep(["--file", str(tmp_path / "plain.csv.gz")], tmp_path)
    assert r.exit_code == 2 and "plain.csv.gz: the gzip file is truncated or corrupt" in r.output


def test_exact_duplicate_rows_are_counted_and_dropped_on_request(tmp_path: Path) -> None:
    ev = _events(n_users=10)
    rows = [f"{u},{i},{t}" for u, i, t in ev]
    rows += rows[:7]  # seven rows logged twice
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", rows)
    base = ["--file", str(log), "--user-core", "1", "--item-core", "1"]
    r = _prep(base, tmp_path)
    assert r.exit_code == 0 and "7 rows (8%) repeat an earlier row exactly; kept" in r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["interactions"] == len(rows)
    r = _prep([*base, "--drop-duplicates"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "exact duplicate rows" in r.output and f"{len(rows)} -> {len(ev)}" in r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["interactions"] == len(ev)


def test_train_file_prints_what_prepare_prints(tmp_path: Path) -> None:
    rows = [f"{u},{i},{t}" for u, i, t in _events(n_users=8, n_items=5)]
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp", rows)
    r = runner.invoke(app, ["train", "--file", str(log), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "below the minimum of 10" in r.output  # 8 users: refused after reading
    assert "log.csv: 64 rows; columns user='user_id'" in r.output and "5-core users, 5-core items" in r.output
