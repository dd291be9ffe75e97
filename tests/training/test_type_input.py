"""Event types read by the model (task.type_input) and weighed in the loss (task.type_weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.sasrec import SASRec, SASRecConfig
from tests.support.data import synthetic_interactions, synthetic_seqdata
from training.checkpoint import load_checkpoint
from training.checkpoint_eval import EvaluationError, evaluate_checkpoint
from training.config import ConfigError
from training.data.preprocess import SeqData, build_sequences
from training.evaluate import full_rank_eval
from training.event_types import (
    train_with_types,
    type_roles,
    type_weight_table,
    typed_leave_one_out,
)
from training.tasks import NextItemTask, shifted_batches
from training.train import train

NAMES = ("view", "like", "dislike")
TINY = {
    "model_overrides": {"max_len": 12, "dim": 16, "num_layers": 1, "num_heads": 1},
    "train_overrides": {"epochs": 2, "batch_size": 32, "device": "cpu", "num_threads": 1},
    "progress": False,
}


def typed_data(num_users: int = 60, seed: int = 2) -> SeqData:
    """Synthetic sequences whose events are views, likes and dislikes (drawn, not periodic)."""
    inter = synthetic_interactions(num_users=num_users, num_items=40, seed=seed)
    draw = np.random.default_rng(seed).choice(3, size=len(inter.users), p=[0.35, 0.45, 0.2])
    inter.types = np.array(NAMES, dtype=object)[draw]
    inter.type_names = NAMES
    data = build_sequences(inter, "toy")
    data.meta["event_types"] = {"negative": ["dislike"], "target": ["like"]}
    return data


def test_the_split_carries_type_ids_and_weights_aligned_with_the_items() -> None:
    data = typed_data()
    roles = type_roles(data, target_types=["like", "view"])
    weights = type_weight_table(roles, {"view": 0.25})
    assert weights is not None and weights.tolist() == [0.0, 0.25, 1.0, 0.0]  # by type id: pad, view, like, dislike
    s = typed_leave_one_out(data, roles, weights=weights).split
    assert s.train_types is not None and s.valid_types is not None and s.test_types is not None
    assert s.train_weights is not None and s.train_targets is not None
    for seq, y, w, m in zip(s.train, s.train_types, s.train_weights, s.train_targets, strict=True):
        assert len(y) == len(seq) == len(w) and set(y.tolist()) <= {1, 2}  # dislikes (id 3) are never input
        assert np.array_equal(w, np.where(m, weights[y], 0))
    # Each history's types are the data's own: find user 0's test history in its full sequence.
    a, b = data.offsets[0], data.offsets[1]
    items, codes = data.items[a:b], data.types[a:b]
    kept = codes != 2
    n = len(s.test_hist[0])
    assert s.test_hist[0].tolist() == items[kept][:n].tolist()
    assert s.test_types[0].tolist() == (codes[kept][:n] + 1).tolist()
    # The untyped baseline carries none of it.
    base = typed_leave_one_out(data, roles, use_types=False).split
    assert base.train_types is None and base.train_weights is None and base.test_types is None


def test_a_weighed_input_only_type_is_learned_and_the_queries_stay_the_targets() -> None:
    data = typed_data()
    roles = type_roles(data)  # targets: like; view input only
    assert type_weight_table(roles, {}) is not None and type_weight_table(roles, {}).tolist() == [0, 0, 1, 0]  # type: ignore[union-attr]
    weights = type_weight_table(roles, {"view": 0.3})
    assert weights is not None and weights.tolist() == pytest.approx([0.0, 0.3, 1.0, 0.0])
    likes = typed_leave_one_out(data, roles).split
    both = typed_leave_one_out(data, roles, weights=weights).split
    # The same queries: each user's last likes, with the same histories.
    assert np.array_equal(likes.test_target, both.test_target) and np.array_equal(likes.valid_target, both.valid_target)
    assert all(np.array_equal(a, b) for a, b in zip(likes.test_hist, both.test_hist, strict=True))
    # Training: views are targets now, at 0.3; likes at 1.
    assert both.train_targets is not None and both.train_weights is not None and both.train_types is not None
    for y, m, w in zip(both.train_types, both.train_targets, both.train_weights, strict=True):
        assert m.all() and np.allclose(w, np.where(y == 1, 0.3, 1.0))
    assert likes.train_targets is not None and not all(m.all() for m in likes.train_targets)


def test_batches_carry_the_input_types_and_the_target_weights() -> None:
    train_seqs = [np.array([5, 6, 7, 8, 9]), np.array([3, 4, 2])]
    types = [np.array([1, 2, 1, 2, 2]), np.array([2, 1, 2])]
    masks = [np.ones(5, bool), np.array([False, True, True])]
    weights = [np.array([0.3, 1.0, 0.3, 1.0, 1.0], np.float32), np.array([0.0, 0.3, 1.0], np.float32)]
    dev = torch.device("cpu")
    plain = list(shifted_batches(train_seqs, 8, np.random.default_rng(0), dev, max_len=10, target_masks=masks))
    (batch,) = list(
        shifted_batches(
            train_seqs, 8, np.random.default_rng(0), dev, 10, target_masks=masks, types=types, target_weights=weights
        )
    )
    # The same rows as without types (nothing more drawn from the generator).
    assert torch.equal(batch["item_seq"], plain[0]["item_seq"]) and torch.equal(batch["target"], plain[0]["target"])
    rows = {(tuple(i.tolist()), tuple(y.tolist())) for i, y in zip(batch["item_seq"], batch["type_seq"], strict=True)}
    assert rows == {((5, 6, 7, 8), (1, 2, 1, 2)), ((0, 0, 3, 4), (0, 0, 2, 1))}  # input types, 0 where items pad
    got = {
        tuple(t.tolist()): tuple(round(x, 2) for x in w.tolist())
        for t, w in zip(batch["target"], batch["target_weight"], strict=True)
    }
    assert got == {(6, 7, 8, 9): (1.0, 0.3, 1.0, 1.0), (0, 0, 4, 2): (0.0, 0.0, 0.3, 1.0)}


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_the_type_weight_weighs_each_targets_loss(exclude_seen: bool) -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=20, max_len=6, dim=8, num_layers=1, dropout=0.0, num_types=2)).eval()
    task = NextItemTask(6, "ce", exclude_seen=exclude_seen)
    batch = {
        "item_seq": torch.tensor([[0, 3, 4, 5, 6], [7, 8, 9, 10, 11]]),
        "type_seq": torch.tensor([[0, 1, 2, 1, 2], [2, 2, 1, 1, 2]]),
        "target": torch.tensor([[0, 4, 5, 6, 12], [8, 0, 10, 11, 13]]),
    }
    target_types = torch.tensor([[0, 2, 1, 2, 1], [2, 0, 1, 2, 1]])  # like = 2 weighs 1, view = 1 weighs w

    def by_hand(w_view: float) -> torch.Tensor:
        """sum_t w_t * CE_t / sum_t w_t, each position's CE by F.cross_entropy."""
        h = model.hidden(batch["item_seq"], batch["type_seq"])  # (B, L, D)
        logits = h @ model.item_vectors()[1:].T  # (B, L, N): items 1..N
        if exclude_seen:  # the row's own items are no negatives; the positive stays
            for r in range(2):
                own = torch.cat([batch["item_seq"][r], batch["target"][r]])
                own = own[own != 0] - 1
                for t in range(5):
                    keep = logits[r, t, batch["target"][r, t] - 1].clone()
                    logits[r, t, own] = -torch.inf
                    logits[r, t, batch["target"][r, t] - 1] = keep
        mask = batch["target"] != 0
        ce = F.cross_entropy(logits[mask], batch["target"][mask] - 1, reduction="none")
        w = torch.where(target_types[mask] == 1, w_view, 1.0)
        return (w * ce).sum() / w.sum()

    with torch.no_grad():
        plain = task.loss(model, batch)
        for w_view in (1.0, 0.3, 0.0):
            weighted = {**batch, "target_weight": torch.where(target_types == 1, w_view, 1.0) * (batch["target"] != 0)}
            got = task.loss(model, weighted)
            assert float(got) == pytest.approx(float(by_hand(w_view)), rel=1e-5)
        assert float(task.loss(model, {**batch, "target_weight": (batch["target"] != 0).float()})) == pytest.approx(
            float(plain), rel=1e-6
        )
        assert float(by_hand(0.3)) != pytest.approx(float(plain), rel=1e-3)  # the weight does change the loss


def test_type_weights_are_refused_naming_what_is_wrong() -> None:
    data = typed_data()
    roles = type_roles(data, target_types=["like", "view"])
    with pytest.raises(ConfigError, match=r"unknown event type\(s\) purchase; the data's types: view, like, dislike"):
        type_weight_table(roles, {"like": 1.0, "purchase": 0.5})
    with pytest.raises(ConfigError, match="dislike negative"):
        type_weight_table(roles, {"dislike": 0.5})
    with pytest.raises(ConfigError, match=r"type_weights\.view: expected a number >= 0"):
        type_weight_table(roles, {"view": -1})
    with pytest.raises(ConfigError, match="every type weighs 0"):
        type_weight_table(roles, {"view": 0, "like": 0})
    with pytest.raises(ConfigError, match="expected a table"):
        type_weight_table(roles, 0.3)
    # Through training: the run is refused before it starts, naming the type.
    with pytest.raises(ConfigError, match="purchase"):
        train_with_types(
            "sasrec", data, Path("/nonexistent"), task_overrides={"type_weights": {"purchase": 1.0}}, **TINY
        )  # type: ignore[arg-type]


def test_type_input_trains_validates_and_tests_with_the_types(tmp_path: Path) -> None:
    data = typed_data()
    task = {"type_input": True, "type_weights": {"like": 1.0, "view": 0.3}, "exclude_seen": True}
    out = train_with_types("sasrec", data, tmp_path / "run", task_overrides=task, target_types=["like", "view"], **TINY)  # type: ignore[arg-type]
    assert out["type_input"] is True and out["type_weights"] == {"view": 0.3, "like": 1.0}
    model, ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert model.cfg.num_types == 3 and ckpt["type_names"] == list(NAMES)  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_config"]["num_types"] == 3
    # Model selection read the types: final.json's validation is the evaluation with them.
    s = typed_leave_one_out(data, type_roles(data, target_types=["like", "view"])).split
    kw = {"num_items": data.num_items, "max_len": model.max_len}
    with_types = full_rank_eval(model.score, s.valid_hist, s.valid_target, types=s.valid_types, **kw)  # type: ignore[arg-type]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["valid"]["ndcg@10"] == pytest.approx(with_types["ndcg@10"])  # type: ignore[index]
    # `seqrec evaluate` has no types to give it: refused, not read as all-first-type histories.
    with pytest.raises(EvaluationError, match="reads event types"):
        evaluate_checkpoint(tmp_path / "run" / "best.pt")


def test_type_input_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    data = typed_data()
    with pytest.raises(ConfigError, match="tisasrec does not read event types"):
        train_with_types("tisasrec", data, tmp_path / "t", task_overrides={"type_input": True}, **TINY)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not with --untyped"):
        train_with_types("sasrec", data, tmp_path / "u", task_overrides={"type_input": True}, use_types=False, **TINY)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="set that instead"):
        train_with_types("sasrec", data, tmp_path / "m", {**TINY["model_overrides"], "num_types": 3})  # type: ignore[dict-item]
    plain = synthetic_seqdata(num_users=40, num_items=30)
    for task, model in (({"type_input": True}, {}), ({}, {"num_types": 2}), ({"type_weights": {"a": 1.0}}, {})):
        with pytest.raises(ConfigError, match="need typed data"):
            train(
                "sasrec",
                plain,
                tmp_path / "p",
                {**TINY["model_overrides"], **model},
                TINY["train_overrides"],
                progress=False,
                task_overrides=task,
            )  # type: ignore[dict-item]


def test_the_command_line_takes_type_input_and_type_weights(tmp_path: Path) -> None:
    import random

    from typer.testing import CliRunner

    from training.cli import app

    rng = random.Random(0)
    rows = ["user_id,item_id,timestamp,type"]
    for u in range(100):
        for t in range(12):
            rows.append(f"u{u},i{rng.randrange(40)},{1_700_000_000 + t * 60 + u},{rng.choice(NAMES)}")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    cache = str(tmp_path / "c")
    runner = CliRunner()
    typed = ["--type-col", "type", "--event-types", ",".join(NAMES), "--negative-types", "dislike"]
    cores = ["--cache-dir", cache, "--user-core", "1", "--item-core", "1"]
    prep = runner.invoke(app, ["prepare", "--file", str(log), "--name", "typed", *typed, *cores])
    assert prep.exit_code == 0, prep.output
    tiny = ["--epochs", "1", "--dim", "16", "--max-len", "12", "--no-progress", "--target-types", "like,view"]
    sets = ["--set", "task.type_input=true", "--set", "task.type_weights={like = 1.0, view = 0.5}"]
    run = runner.invoke(
        app, ["train", "--dataset", "typed", "--cache-dir", cache, *tiny, *sets, "--out", str(tmp_path / "r")]
    )
    assert run.exit_code == 0, run.output
    typed_json = json.loads((tmp_path / "r" / "typed.json").read_text())
    assert typed_json["type_input"] is True and typed_json["type_weights"] == {"view": 0.5, "like": 1.0}
    bad = ["--set", "task.type_weights={like = 1.0, purchase = 0.5}"]
    run = runner.invoke(
        app, ["train", "--dataset", "typed", "--cache-dir", cache, *tiny, *bad, "--out", str(tmp_path / "b")]
    )
    assert run.exit_code != 0 and "unknown event type(s) purchase" in run.output
