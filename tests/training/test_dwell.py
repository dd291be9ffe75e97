"""Dwell-time repetition: the expansion, its training pairs, and that evaluation and serving
read only what a live history holds (never the target, never its time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.bundles.history import apply_transform, check_transform, dwell_counts
from app.bundles.manifest import BundleError
from models.gru4rec import GRU4Rec, GRU4RecConfig
from tests.support.data import synthetic_seqdata
from training.config import ConfigError
from training.data import SeqData, leave_one_out
from training.dwell import dwell_batches, dwell_spec, training_pair
from training.evaluate import full_rank_eval

SPEC = {"kind": "dwell_repeat", "unit_s": 30, "cap_s": 300, "session_gap_s": 1800}
DWELL_TASK = {"parallel": "padded", "n_extra_negatives": -1, "dwell_unit_s": 30, "dwell_cap_s": 300}


def test_counts_by_hand() -> None:
    # gaps 65, 5, 330 (capped to 300), 4600 (> session gap: a new session), 10; the newest: unknown.
    t = np.array([0, 65, 70, 400, 5000, 5010])
    assert dwell_counts(t, 30, 300, 1800).tolist() == [3, 1, 11, 1, 1, 1]
    assert dwell_counts(np.array([10, 5]), 30, 300, 1800).tolist() == [1, 1]  # out of order: no dwell
    assert dwell_counts(np.array([7]), 30, 300, 1800).tolist() == [1]
    items, times = apply_transform(SPEC, np.array([4, 5, 6]), np.array([0, 65, 70]))
    assert items.tolist() == [4, 4, 4, 5, 6] and times.tolist() == [0, 0, 0, 65, 70]


def test_bad_parameters_are_refused_at_load() -> None:
    check_transform(SPEC)
    for bad in ({**SPEC, "unit_s": 0}, {**SPEC, "cap_s": -1}, {**SPEC, "unit_s": 1.5}, {**SPEC, "max_repeat": 3}):
        with pytest.raises(BundleError, match="dwell_repeat"):
            check_transform(bad)
    assert dwell_spec(0, 300, 1800) is None  # 0 = off


def test_training_targets_are_the_next_events_at_their_first_copy() -> None:
    items, t = np.array([1, 2, 3, 4, 5, 6]), np.array([0, 65, 70, 400, 5000, 5010])
    inp, tgt = training_pair(SPEC, items, t)
    assert inp.tolist() == [1, 1, 1, 2] + [3] * 11 + [4, 5]  # the last input (5) read once
    assert tgt.tolist() == [2, 0, 0, 3, 4] + [0] * 10 + [5, 6]
    assert tgt[tgt != 0].tolist() == items[1:].tolist()  # every transition once, never a repeat


def test_training_state_before_each_target_is_the_served_state_of_that_prefix() -> None:
    """The state at the first copy of event i equals the model on the live history ending at i
    (dwell_repeat of it, its newest event read once): train and serve solve one problem."""
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(num_items=20, max_len=500, dim=8)).eval()
    rng = np.random.default_rng(0)
    items = rng.integers(1, 21, size=12)
    times = np.cumsum(rng.choice([0, 20, 45, 200, 900, 4000], size=12))
    inp, tgt = training_pair(SPEC, items, times)
    with torch.no_grad():
        h = model.user_vector(model.hidden(torch.as_tensor(inp)[None]))[0]  # (M, H+1)
        for i, pos in enumerate(np.flatnonzero(tgt)):  # the i-th target: the event after event i
            live, _ = apply_transform(SPEC, items[: i + 1], times[: i + 1])
            assert tgt[pos] == items[i + 1]
            torch.testing.assert_close(h[pos], model(torch.as_tensor(live)[None])[0], atol=1e-5, rtol=1e-5)


def test_batches_cut_to_max_len_after_the_expansion() -> None:
    items, t = np.arange(1, 41), np.arange(40) * 100  # 100-s gaps: 4 copies each
    (b,) = list(dwell_batches(SPEC, [items], [t], 4, np.random.default_rng(0), "cpu", max_len=10))
    inp, tgt = training_pair(SPEC, items, t)
    assert b["item_seq"][0].tolist() == inp[-10:].tolist() and b["target"][0].tolist() == tgt[-10:].tolist()
    with pytest.raises(ValueError, match="times"):
        list(dwell_batches(SPEC, [items], None, 4, np.random.default_rng(0), "cpu", max_len=10))


def _with_target_times(data: SeqData, shift: int) -> SeqData:
    """The same data with every user's last event (the test target) moved by `shift` seconds."""
    ts = data.timestamps.copy()
    ts[data.offsets[1:] - 1] += shift
    return SeqData(**{**data.__dict__, "timestamps": ts})


def test_evaluation_targets_and_ranks_are_untouched_and_the_target_time_never_leaks() -> None:
    data = synthetic_seqdata(num_users=80)
    split = leave_one_out(data)
    moved = leave_one_out(_with_target_times(data, 1_000_000))  # target times far from the rest
    assert np.array_equal(moved.test_target, split.test_target)
    for a, b, ha in zip(split.test_times, moved.test_times, split.test_hist, strict=True):
        assert np.array_equal(a, b)  # the target's time is not in the history's times
        assert np.array_equal(apply_transform(SPEC, ha, a)[0], apply_transform(SPEC, ha, b)[0])
    seen: list[np.ndarray] = []

    def score(seq: torch.Tensor) -> torch.Tensor:  # depends on which items were read, not how often
        seen.extend(s[s != 0].numpy() for s in seq)
        out = torch.zeros(len(seq), data.num_items + 1)
        out.scatter_(1, seq, 1.0)
        return out + torch.arange(data.num_items + 1) * 1e-3

    def run(transform, max_len: int):
        kw = {"times": split.test_times, "transform": transform} if transform else {}
        return full_rank_eval(
            score, split.test_hist, split.test_target, data.num_items, max_len, return_ranks=True, **kw
        )

    expand = lambda h, t: apply_transform(SPEC, h, t)  # noqa: E731
    # Uncut, the same items are read: same targets and exclusions give the same ranks.
    base, base_ranks = run(None, 10_000)
    dwell, dwell_ranks = run(expand, 10_000)
    assert np.array_equal(base_ranks, dwell_ranks) and base == dwell
    assert len(np.unique(base_ranks)) > 10  # the ranks are informative, not all equal
    seen.clear()
    run(expand, 30)
    # What the model read: each history expanded, cut to 30 AFTER the expansion, its newest event once.
    want = {tuple(apply_transform(SPEC, h, t)[0][-30:]) for h, t in zip(split.test_hist, split.test_times, strict=True)}
    assert {tuple(s) for s in seen} == want
    assert any(len(s) == 30 and len(set(s)) < 30 for s in seen)  # repeats happened and the cut bit
    for h, t in zip(split.test_hist, split.test_times, strict=True):
        assert apply_transform(SPEC, h, t)[0][-2:].tolist()[-1] == h[-1]
        assert dwell_counts(t, 30, 300, 1800)[-1] == 1


def test_dwell_on_session_parallel_or_without_times_is_refused(tmp_path: Path) -> None:
    from training.train import train

    data = synthetic_seqdata(num_users=30)
    with pytest.raises(ConfigError, match="padded"):
        train("gru4rec", data, tmp_path / "a", task_overrides={"dwell_unit_s": 30}, progress=False)
    untimed = SeqData(**{**data.__dict__, "timestamps": None})
    with pytest.raises(ConfigError, match="timestamps"):
        train("gru4rec", untimed, tmp_path / "b", task_overrides=DWELL_TASK, progress=False)


@pytest.fixture(scope="module")
def dwell_bundle(ml100k: SeqData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from training.export import export_bundle
    from training.train import train

    tmp = tmp_path_factory.mktemp("dwell")
    res = train(
        "gru4rec",
        ml100k,
        tmp / "run",
        model_overrides={"dim": 16, "max_len": 40},  # short: the cut after the expansion matters
        train_overrides={"epochs": 1, "max_users": 120, "batch_size": 64},
        task_overrides=DWELL_TASK,
        progress=False,
    )
    return res.run_dir / "best.pt", export_bundle(res.run_dir / "best.pt", tmp / "art", name="dwell", program=False)


def test_served_equals_offline_on_real_histories(ml100k: SeqData, dwell_bundle: tuple[Path, Path]) -> None:
    from app.bundles.bundle import Bundle
    from training.train import load_checkpoint

    ckpt, path = dwell_bundle
    bundle = Bundle.load(path)
    assert bundle.needs_times and bundle.history_transform == SPEC
    model, _ = load_checkpoint(ckpt, torch.device("cpu"))
    split = leave_one_out(ml100k)
    hist, times = split.test_hist[:150], split.test_times[:150]
    served = bundle.user_vectors(hist, times)  # (U, D+1): ONNX on the bundle's own expansion and cut
    offline: list[np.ndarray] = []

    def score(seq: torch.Tensor) -> torch.Tensor:  # what offline evaluation feeds the model
        with torch.no_grad():
            u = model(seq)
        offline.extend(zip(seq.numpy(), u.numpy(), strict=True))
        return u @ model.item_vectors().T

    full_rank_eval(
        score,
        hist,
        split.test_target[:150],
        ml100k.num_items,
        40,
        times=times,
        transform=lambda h, t: apply_transform(SPEC, h, t),
    )
    by_seq = {tuple(s[s != 0]): u for s, u in offline}
    longer = 0
    for h, t, v in zip(hist, times, served, strict=True):
        expanded = apply_transform(SPEC, h, t)[0]
        longer += len(h) <= 40 < len(expanded)
        np.testing.assert_allclose(v, by_seq[tuple(expanded[-40:])], atol=1e-4)
    assert longer > 0  # some histories fit before the expansion and not after it
