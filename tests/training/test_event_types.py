"""Event types through prepare, the typed split, the training batches and the typed evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.data import synthetic_interactions
from training.data import DatasetError, FileOptions, prepare_files
from training.data.preprocess import build_sequences
from training.data.registry import load_seqdata, save_seqdata
from training.event_types import (
    evaluate_typed,
    train_with_types,
    type_roles,
    type_summary,
    typed_leave_one_out,
)
from training.tasks import shifted_batches

# One user, by hand: v view, l like, d dislike; times 1..10 in order, rows shuffled in the file.
HAND = [
    ("u1", "a", 1, "view"),
    ("u1", "b", 2, "like"),
    ("u1", "c", 3, "dislike"),
    ("u1", "d", 4, "view"),
    ("u1", "e", 5, "like"),
    ("u1", "f", 6, "dislike"),
    ("u1", "g", 7, "view"),
    ("u1", "h", 8, "like"),
    ("u1", "i", 9, "view"),
    ("u1", "j", 10, "dislike"),
]
TYPED = {"type_col": "type", "event_types": ("view", "like", "dislike"), "negative_types": ("dislike",)}


def _write(path: Path, rows: list[tuple[str, str, int, str]], with_type: bool = True) -> Path:
    head = "user_id,item_id,timestamp" + (",type" if with_type else "")
    lines = [",".join(map(str, r if with_type else r[:3])) for r in rows]
    path.write_text("\n".join([head, *lines]) + "\n")
    return path


def _opts(**kw: object) -> FileOptions:
    base = {"user_core": 0, "item_core": 0, "min_len": 1, **TYPED, "target_types": ("like",)}
    return FileOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_types_follow_the_time_sort_and_survive_save_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [HAND[i] for i in rng.permutation(len(HAND))]
    data = prepare_files([_write(tmp_path / "log.csv", rows)], _opts(), "hand", tmp_path / "cache")
    assert data.type_names == ["view", "like", "dislike"]
    got = [(data.item_ids[i - 1], data.type_names[t]) for i, t in zip(data.items, data.types, strict=True)]
    assert got == [(item, kind) for _, item, _, kind in HAND]
    assert data.meta["event_types"] == {"negative": ["dislike"], "target": ["like"]}
    assert type_summary(data) == "event types: view 4 (40%), like 3 (30% target), dislike 3 (30% negative)"
    save_seqdata(data, tmp_path / "x.npz")
    back = load_seqdata(tmp_path / "x.npz")
    np.testing.assert_array_equal(back.types, data.types)
    assert back.type_names == data.type_names and back.fingerprint() == data.fingerprint()


def test_types_survive_k_core_min_len_and_duplicate_removal(tmp_path: Path) -> None:
    inter = synthetic_interactions(num_users=80, num_items=60, seed=3)
    kinds = np.array(["view", "like", "dislike"], dtype=object)[np.arange(len(inter.users)) % 3]
    rows = list(zip(inter.users, inter.items, inter.timestamps.tolist(), kinds, strict=True))
    expect = {(u, i, int(t)): k for u, i, t, k in rows}
    log = _write(tmp_path / "a.csv", rows)
    again = _write(tmp_path / "b.csv", rows[:50])  # the second file repeats 50 events: dropped
    data = prepare_files([log, again], _opts(user_core=8, item_core=8, min_len=12), "kc", tmp_path / "cache")
    assert data.types is not None and len(data.types) == data.num_interactions
    steps = [r["step"] for r in data.meta["report"]]
    assert "duplicate events" in steps and steps[-1].startswith("users with")  # dedup, k-core, min_len all cut
    assert data.timestamps is not None
    for u in range(data.num_users):
        a, b = data.offsets[u], data.offsets[u + 1]
        for i, t, k in zip(data.items[a:b], data.timestamps[a:b], data.types[a:b], strict=True):
            assert expect[(data.user_ids[u], data.item_ids[i - 1], int(t))] == data.type_names[k]


def test_undeclared_or_empty_types_and_inconsistent_flags_are_refused(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", [*HAND[:3], ("u1", "k", 11, "purchase")])
    with pytest.raises(DatasetError, match=r"log\.csv:5: event type 'purchase' is not declared"):
        prepare_files([log], _opts(), "bad", tmp_path / "cache")
    empty = _write(tmp_path / "empty.csv", [*HAND[:2], ("u1", "k", 11, " ")])
    with pytest.raises(DatasetError, match=r"empty\.csv:4: empty event type"):
        prepare_files([empty], _opts(), "bad2", tmp_path / "cache")
    with pytest.raises(DatasetError, match="need --type-col"):
        FileOptions(negative_types=("dislike",)).check()
    with pytest.raises(DatasetError, match="both negative and target"):
        FileOptions(type_col="t", negative_types=("x",), target_types=("x",)).check()
    with pytest.raises(DatasetError, match="missing event type column 'kind'"):
        prepare_files([log], _opts(type_col="kind"), "bad3", tmp_path / "cache")


def test_untyped_data_keeps_its_fingerprint_and_cache_key(tmp_path: Path) -> None:
    inter = synthetic_interactions(num_users=30, seed=1)
    plain = build_sequences(inter, "s")
    assert plain.types is None
    # The fingerprint of untyped data, as computed before types existed (offsets, items, item ids).
    import hashlib

    h = hashlib.sha256()
    h.update(plain.offsets.tobytes())
    h.update(plain.items.astype(np.int32).tobytes())
    h.update("\n".join(plain.item_ids).encode())
    assert plain.fingerprint() == h.hexdigest()
    inter.types = np.array(["view"] * len(inter.users), dtype=object)
    typed = build_sequences(inter, "s")
    assert typed.fingerprint() != plain.fingerprint()
    assert "type_col" not in FileOptions().to_dict()  # so the prepared-data cache key is unchanged
    assert FileOptions.from_dict(_opts().to_dict()) == _opts()


def _hand_data(tmp_path: Path):
    return prepare_files([_write(tmp_path / "log.csv", HAND)], _opts(), "hand", tmp_path / "cache")


def test_the_typed_split_holds_out_the_last_likes_and_never_uses_dislikes(tmp_path: Path) -> None:
    data = _hand_data(tmp_path)
    idx = data.item_index()
    ids = lambda xs: [idx[x] for x in xs]  # noqa: E731
    typed = typed_leave_one_out(data, type_roles(data))
    s = typed.split
    # Likes at b, e, h: validation target e, test target h; dislikes c, f never in a history.
    assert s.valid_target.tolist() == ids("e") and s.test_target.tolist() == ids("h")
    assert s.valid_hist[0].tolist() == ids("abd") and s.test_hist[0].tolist() == ids("abdeg")
    assert s.train[0].tolist() == ids("abd")
    assert s.train_targets is not None and s.train_targets[0].tolist() == [False, True, False]
    assert typed.valid_negative[0].tolist() == ids("c") and typed.test_negative[0].tolist() == ids("cf")
    # Untyped baseline: the same queries, every event input and target.
    base = typed_leave_one_out(data, type_roles(data), use_types=False)
    assert base.split.test_target.tolist() == ids("h") and base.split.train_targets is None
    assert base.split.test_hist[0].tolist() == ids("abcdefg") and base.split.train[0].tolist() == ids("abcd")


def test_input_only_positions_are_never_targets_in_a_batch() -> None:
    train = [np.array([5, 6, 7, 8, 9]), np.array([3, 4, 2])]
    masks = [np.array([True, False, True, False, True]), np.array([False, False, True])]
    rng = np.random.default_rng(0)
    (batch,) = list(shifted_batches(train, 8, rng, torch.device("cpu"), max_len=10, target_masks=masks))
    rows = {tuple(r[r != 0].tolist()) for r in batch["item_seq"]}
    assert rows == {(5, 6, 7, 8), (3, 4)}  # inputs keep every event
    targets = {tuple(r.tolist()) for r in batch["target"]}
    assert targets == {(0, 7, 0, 9), (0, 0, 0, 2)}  # targets only where the mask allows


class _Fixed(torch.nn.Module):
    """Scores independent of the history: item i scores i (the catalogue's top is its last items)."""

    max_len = 5

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def score(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.n + 1, dtype=torch.float32).expand(seq.shape[0], -1)


def test_disliked_items_are_counted_in_the_top_k_and_excluded_from_the_ranking() -> None:
    n = 30
    hists = [np.array([1, 2]), np.array([3])]
    targets = np.array([20, 29])
    negative = [np.array([30, 5]), np.array([], np.int64)]  # user 0 disliked item 30, the top item
    out = evaluate_typed(_Fixed(n), hists, targets, negative, n, k=10)
    assert out["queries_with_disliked_in_top10_history_only"] == 1
    assert out["disliked_items_in_top10_history_only"] == 1
    assert out["queries_with_disliked_in_top10"] == 0
    # User 0's target 20 ranks 10th (items 21..30 above it) with the history only, 9th without 30.
    assert out["history_only"]["hr@10"] == 0.5 and out["hr@10"] == 1.0


def test_typed_training_runs_and_evaluates_the_same_queries(tmp_path: Path) -> None:
    inter = synthetic_interactions(num_users=60, num_items=40, seed=2)
    inter.types = np.array(["view", "like", "like", "dislike"], dtype=object)[np.arange(len(inter.users)) % 4]
    inter.type_names = ("view", "like", "dislike")
    data = build_sequences(inter, "toy")
    data.meta["event_types"] = {"negative": ["dislike"], "target": ["like"]}
    kw = {
        "model_overrides": {"max_len": 12, "dim": 16, "num_layers": 1, "num_heads": 1},
        "train_overrides": {"epochs": 1, "batch_size": 32, "device": "cpu", "num_threads": 1},
        "task_overrides": {"exclude_seen": True},
        "progress": False,
    }
    typed = train_with_types("sasrec", data, tmp_path / "typed", **kw)  # type: ignore[arg-type]
    base = train_with_types("sasrec", data, tmp_path / "base", use_types=False, **kw)  # type: ignore[arg-type]
    assert typed["test"]["queries"] == base["test"]["queries"] > 0
    assert typed["test"]["queries_with_disliked_in_top10"] == 0
    assert json.loads((tmp_path / "typed" / "typed.json").read_text())["typed"] is True
    with pytest.raises(DatasetError, match="next-item model"):
        train_with_types("bert4rec", data, tmp_path / "b4r", **kw)  # type: ignore[arg-type]


def test_prepare_and_train_take_typed_logs_from_the_command_line(tmp_path: Path) -> None:
    import random

    from typer.testing import CliRunner

    from training.cli import app

    rng = random.Random(0)
    rows = ["user_id,item_id,timestamp,type"]
    for u in range(120):
        for t in range(12):
            kind = rng.choice(["view", "like", "like", "dislike"])
            rows.append(f"u{u},i{rng.randrange(40)},{1_700_000_000 + t * 60 + u},{kind}")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    cache = str(tmp_path / "c")
    runner = CliRunner()
    typed = ["--type-col", "type", "--negative-types", "dislike", "--target-types", "like"]
    cores = ["--cache-dir", cache, "--user-core", "1", "--item-core", "1"]
    prep = runner.invoke(app, ["prepare", "--file", str(log), "--name", "typed", *typed, *cores])
    assert prep.exit_code == 0, prep.output
    assert "event types:" in prep.stderr and "negative" in prep.stderr
    tiny = ["--epochs", "1", "--dim", "16", "--max-len", "12", "--out", str(tmp_path / "run"), "--no-progress"]
    run = runner.invoke(app, ["train", "--dataset", "typed", "--cache-dir", cache, *tiny])
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["typed"] is True and out["test"]["queries_with_disliked_in_top10"] == 0
