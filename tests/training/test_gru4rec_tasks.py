from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gru4rec import GRU4Rec, GRU4RecConfig
from training.cloze import ClozeTask, cloze_mask
from training.gru4rec_tasks import PaddedNextItemTask, SessionParallelTask
from training.sessions import session_split

SESSIONS = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9]), np.array([10, 11])]
POP = torch.ones(12)


def _session_batches(seed: int = 0) -> tuple[list[dict], list[np.ndarray]]:
    task = SessionParallelTask(n_extra=0, popularity=POP)
    order = np.random.default_rng(seed).permutation(len(SESSIONS))
    got = list(task.batches(SESSIONS, 2, np.random.default_rng(seed), torch.device("cpu")))
    return got, [SESSIONS[i] for i in order]


def test_session_parallel_layout_follows_the_paper() -> None:
    batches, ordered = _session_batches()
    # Replay: two slots take sessions in shuffled order; each step emits (current, next) per slot.
    slots = [list(ordered[0]), list(ordered[1])]
    queue = ordered[2:]
    pos, fresh = [0, 0], [True, True]
    for b in batches:
        for k in range(2):
            assert int(b["items"][k]) == slots[k][pos[k]]
            assert int(b["target"][k]) == slots[k][pos[k] + 1]
            assert bool(b["reset"][k]) == fresh[k]
        for k in range(2):
            pos[k] += 1
            fresh[k] = pos[k] + 1 >= len(slots[k])
            if fresh[k]:
                if not queue:
                    return
                slots[k], pos[k], queue = list(queue[0]), 0, queue[1:]
    pytest.fail("the epoch should end when a slot cannot be refilled")


def test_hidden_state_is_reset_where_a_session_starts() -> None:
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(num_items=11, dim=8))
    task = SessionParallelTask(n_extra=3, popularity=POP)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    step = model.step

    def spy(items: torch.Tensor, h: torch.Tensor | None):
        out, h_new = step(items, h)
        seen.append((h.clone(), h_new.detach().clone()))
        return out, h_new

    model.step = spy  # type: ignore[method-assign]
    batches = list(task.batches(SESSIONS * 3, 2, np.random.default_rng(1), torch.device("cpu")))
    assert len(batches) >= 4
    for b in batches:
        task.loss(model, b).backward()
    for t, b in enumerate(batches):
        h_in = seen[t][0]
        for k in range(2):
            if bool(b["reset"][k]):
                assert torch.all(h_in[:, k] == 0)
            else:  # carries the previous step's state for the same slot
                assert torch.allclose(h_in[:, k], seen[t - 1][1][:, k])
                assert torch.any(h_in[:, k] != 0)


def test_extra_negatives_follow_support_power_alpha() -> None:
    pop = torch.tensor([0.0, 1.0, 9.0])
    for alpha, want in [(0.0, 0.5), (1.0, 0.9), (0.5, 0.75)]:
        task = PaddedNextItemTask(n_extra=40000, alpha=alpha, popularity=pop)
        draws = task.sample(torch.device("cpu"))
        assert int((draws == 0).sum()) == 0  # padding is never a negative
        assert float((draws == 2).float().mean()) == pytest.approx(want, abs=0.015)


def test_cloze_masks_a_fresh_fraction_each_epoch_plus_last_item_samples() -> None:
    rng = np.random.default_rng(0)
    seq = np.arange(1, 1001)
    inp, lab = cloze_mask(seq, 0.2, 5000, rng)
    frac = (inp == 5000).mean()
    assert 0.15 < frac < 0.25 and np.array_equal(lab[inp == 5000], seq[inp == 5000])
    assert np.all(lab[inp != 5000] == 0) and np.array_equal(inp[inp != 5000], seq[inp != 5000])
    assert not np.array_equal(cloze_mask(seq, 0.2, 5000, rng)[0], inp)  # a new mask every time
    task = ClozeTask(max_len=50, mask_token=5000, mask_prob=0.2, last_item_ratio=0.5)
    train = [np.arange(1, 80), np.arange(3, 10), np.array([7])]
    batches = list(task.batches(train, 2, rng, torch.device("cpu")))
    rows = sum(b["item_seq"].shape[0] for b in batches)
    assert rows == 3 + 2 == task.num_batches(train, 5) * 5  # 3 Cloze samples + round(0.5 * 3) last-item
    for b in batches:
        assert b["item_seq"].shape[1] <= 50
        assert torch.all((b["labels"] != 0) == (b["item_seq"] == 5000))
        assert torch.all((b["labels"] != 0).sum(1) >= 1)  # every sample has a masked item


def test_cloze_prefix_samples_mask_the_last_item_of_a_proper_prefix() -> None:
    rng = np.random.default_rng(0)
    train = [np.arange(1, 80), np.arange(100, 105), np.array([7, 8])]  # [7, 8] has no proper prefix >= 2
    task = ClozeTask(max_len=10, mask_token=500, last_item_ratio=0.0, prefix_ratio=2.0)
    samples = task._samples(train, rng)
    assert len(samples) == 3 + 6 == task.num_batches(train, 1)
    ends = set()
    for inp, lab in samples[3:]:
        assert len(inp) <= 10 and inp[-1] == 500 and np.all(inp[:-1] != 500)  # only the last is masked
        assert np.all(lab[:-1] == 0)
        full = next(s for s in train if lab[-1] in s)
        k = int(np.flatnonzero(full == lab[-1])[0]) + 1  # the prefix ends at item k
        assert 2 <= k < len(full)  # a proper prefix with context
        assert np.array_equal(inp[:-1], full[:k][-10:][:-1])
        ends.add(k)
    assert len(ends) > 2  # the cut points vary
    with pytest.raises(ValueError, match="prefix_ratio"):
        ClozeTask(max_len=10, mask_token=500, prefix_ratio=-1.0)


def test_cloze_windows_reach_older_history_and_buckets_cut_padding() -> None:
    rng = np.random.default_rng(0)
    seq = np.arange(1, 101)  # items in order: a contiguous window shows as consecutive numbers
    task = ClozeTask(max_len=10, mask_token=500, mask_prob=0.2, last_item_ratio=0.0, newest_prob=0.5)
    ends = set()
    for _ in range(200):
        (b,) = list(task.batches([seq], 1, rng, torch.device("cpu")))
        orig = torch.where(b["labels"] != 0, b["labels"], b["item_seq"])[0]  # unmasked window
        assert len(orig) == 10 and torch.all(torch.diff(orig) == 1)
        ends.add(int(orig[-1]))
    assert 100 in ends and len(ends) > 20 and max(ends) == 100  # newest and many older windows, no more
    newest = ClozeTask(max_len=10, mask_token=500, last_item_ratio=0.0)  # default: newest window only
    (b,) = list(newest.batches([seq], 1, rng, torch.device("cpu")))
    assert int(torch.where(b["labels"] != 0, b["labels"], b["item_seq"])[0, -1]) == 100
    lengths = rng.integers(2, 200, size=2000)
    train = [np.arange(1, n + 1) for n in lengths]

    def cells(bucket: bool) -> int:
        task = ClozeTask(max_len=200, mask_token=500, last_item_ratio=0.0, bucket=bucket)
        return sum(b["item_seq"].numel() for b in task.batches(train, 32, rng, torch.device("cpu")))

    padded, plain = cells(True), cells(False)
    assert padded < 0.7 * plain  # far fewer padded cells per epoch


def test_session_split_is_time_ordered_and_filters_unseen_items(ml100k) -> None:
    from training.data import to_sessions

    sess = to_sessions(ml100k, "gap", gap_seconds=1800)
    split = session_split(sess, test_frac=0.1, valid_frac=0.1)
    starts = sess.timestamps[sess.offsets[:-1]]
    cut = np.sort(starts)[len(starts) - round(0.1 * len(starts))]
    train_items = set(np.concatenate(split.train).tolist())
    assert len(split.train) == len(starts) - round(0.1 * len(starts)) * 2
    assert all(int(t) in train_items for t in split.test_target)
    assert len(split.test_hist) == len(split.test_target) > 100
    # test queries are prefixes of test sessions, which all start at or after the cut
    assert all(len(h) >= 1 for h in split.test_hist) and cut > starts.min()


def test_cloze_sampled_softmax_scores_masked_positions_with_the_eq7_head() -> None:
    from models.bert4rec import BERT4Rec, BERT4RecConfig
    from training import losses

    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(num_items=6, max_len=8, dim=8, num_heads=2)).eval()
    seq = torch.tensor([[0, 1, 7, 3], [2, 7, 4, 7]])
    labels = torch.tensor([[0, 0, 5, 0], [0, 6, 0, 1]])
    pop = torch.tensor([0.0, 5, 1, 1, 2, 3, 1])
    task = ClozeTask(max_len=8, mask_token=7, loss_name="sampled", num_negatives=64, popularity=pop)
    torch.manual_seed(1)
    got = task.loss(model, {"item_seq": seq, "labels": labels})
    at = labels != 0
    torch.manual_seed(1)
    head = model.head(model.encode(seq)[at])
    want = losses.sampled_softmax(head, labels[at], model.item_vectors(), 64, pop)
    assert torch.allclose(got, want)
    other = ClozeTask(max_len=8, mask_token=7, loss_name="sampled", num_negatives=64, popularity=pop, logq="sampled")
    torch.manual_seed(1)
    got = other.loss(model, {"item_seq": seq, "labels": labels})
    torch.manual_seed(1)
    want = losses.sampled_softmax(head, labels[at], model.item_vectors(), 64, pop, logq="sampled")
    assert torch.allclose(got, want)  # the option is honoured
    full = ClozeTask(max_len=8, mask_token=7).loss(model, {"item_seq": seq, "labels": labels})
    assert not torch.allclose(got, full)  # a different objective, not a silent fallback
    with pytest.raises(ValueError, match="unknown loss"):
        ClozeTask(max_len=8, mask_token=7, loss_name="bce").loss(model, {"item_seq": seq, "labels": labels})


def test_cloze_exclude_seen_drops_the_rows_other_items_from_the_softmax() -> None:
    from models.bert4rec import BERT4Rec, BERT4RecConfig
    from training.cloze import ClozeTask

    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(num_items=30, max_len=8, dim=8, num_heads=2)).eval()
    batch = {
        "item_seq": torch.tensor([[0, 3, 31, 5, 31], [2, 4, 6, 8, 31]]),  # 31 = [mask]
        "labels": torch.tensor([[0, 0, 4, 0, 7], [0, 0, 0, 0, 9]]),
    }
    plain = ClozeTask(max_len=8, mask_token=31).loss(model, batch)
    excl = ClozeTask(max_len=8, mask_token=31, exclude_seen=True).loss(model, batch)
    # By hand: row 0's masked positions see {their positive} + items outside {3, 4, 5, 7}.
    logits = model.head(model.encode(batch["item_seq"])) @ model.item_vectors().T  # (B, L, N+1)
    want = []
    for b, t, p, seen in [(0, 2, 4, {3, 4, 5, 7}), (0, 4, 7, {3, 4, 5, 7}), (1, 4, 9, {2, 4, 6, 8, 9})]:
        cand = [p] + [i for i in range(1, 31) if i not in seen]
        want.append(-torch.log_softmax(logits[b, t, cand], 0)[0])
    assert torch.allclose(excl, torch.stack(want).mean(), atol=1e-5)
    assert excl < plain
    with pytest.raises(ValueError, match="exclude_seen"):
        ClozeTask(max_len=8, mask_token=31, loss_name="sampled", exclude_seen=True)


def test_full_catalogue_ce_takes_the_fused_loss_with_the_same_value_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training import losses
    from training.ranking_losses import ranking_loss

    calls = []
    fused = losses.full_softmax_ce
    monkeypatch.setattr(losses, "full_softmax_ce", lambda *a, **k: calls.append(1) or fused(*a, **k))
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(num_items=11, dim=8))
    task = PaddedNextItemTask(n_extra=-1, popularity=POP)  # every item a negative, CE
    h = torch.randn(9, 8)
    target = torch.randint(1, 12, (9,))
    got = task.score_loss(model, h, target, None)
    assert calls  # the fused loss, not the (T, N+1) score matrix
    g_got = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
    # The general path: scores against every row, the target and padding masked as negatives.
    u, table = model.user_vector(h), model.item_vectors()
    cols = torch.arange(table.shape[0])
    mask = (cols[None] != target[:, None]) & (cols[None] != 0)
    want = ranking_loss((u * table[target]).sum(-1), u @ table.T, mask, "ce")
    g_want = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    assert torch.allclose(got, want, atol=1e-6)
    for a, b in zip(g_got, g_want, strict=True):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))


def test_padded_exclude_seen_drops_the_rows_own_items_from_the_softmax() -> None:
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(num_items=11, dim=8)).eval()
    batch = {"item_seq": torch.tensor([[0, 3, 5], [2, 4, 6]]), "target": torch.tensor([[0, 5, 7], [4, 6, 1]])}
    excl = PaddedNextItemTask(n_extra=-1, popularity=POP, exclude_seen=True).loss(model, batch)
    plain = PaddedNextItemTask(n_extra=-1, popularity=POP).loss(model, batch)
    # By hand: each position's softmax holds its positive and the items its row never touched.
    scores = model.user_vector(model.hidden(batch["item_seq"])) @ model.item_vectors().T  # (B, L, N+1)
    want = []
    for b, t, p, seen in [
        (0, 1, 5, {3, 5, 7}),
        (0, 2, 7, {3, 5, 7}),
        (1, 0, 4, {1, 2, 4, 6}),
        (1, 1, 6, {1, 2, 4, 6}),
        (1, 2, 1, {1, 2, 4, 6}),
    ]:
        cand = [p] + [i for i in range(1, 12) if i not in seen]
        want.append(-torch.log_softmax(scores[b, t, cand], 0)[0])
    assert torch.allclose(excl, torch.stack(want).mean(), atol=1e-5)
    assert excl < plain
    for bad in ({"n_extra": 64}, {"loss_name": "bpr-max", "n_extra": -1}):
        with pytest.raises(ValueError, match="exclude_seen"):
            PaddedNextItemTask(popularity=POP, exclude_seen=True, **bad)


def test_padded_task_honours_train_newest_prob() -> None:
    from training.config import SessionTaskConfig, TrainConfig
    from training.zoo import _gru4rec_task

    cfg = GRU4RecConfig(num_items=200, max_len=10)
    tc = TrainConfig(newest_prob=0.0)
    task = _gru4rec_task(cfg, tc, SessionTaskConfig(parallel="padded", n_extra_negatives=-1), np.ones(201))
    seq = np.arange(1, 101)
    ends = {int(b["target"][0, -1]) for _ in range(50) for b in task.batches([seq], 1, np.random.default_rng(_), "cpu")}
    assert len(ends) > 10  # random earlier windows, not only the newest
    with pytest.raises(Exception, match="exclude_seen"):
        _gru4rec_task(cfg, tc, SessionTaskConfig(parallel="session", exclude_seen=True), np.ones(201))
