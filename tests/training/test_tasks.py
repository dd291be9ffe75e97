"""Batching options of the sequence tasks and the learning-rate schedule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from training.config import NextItemConfig, TrainConfig
from training.optim import budget_last_epoch, lr_scheduler
from training.tasks import batch_order, shifted_batches
from training.zoo import negative_weights

CPU = torch.device("cpu")


def test_bucketed_order_is_a_permutation_with_homogeneous_batches() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 200, size=5000)
    batches = batch_order(lengths, 64, rng, bucket=True)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(5000))  # every row exactly once
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    plain = np.mean([np.ptp(lengths[b]) for b in batch_order(lengths, 64, rng, bucket=False)])
    assert spread < plain / 5  # far less padding than a plain shuffle
    again = batch_order(lengths, 64, np.random.default_rng(1), bucket=True)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, again, strict=False))  # still random


def test_windows_are_contiguous_and_never_past_the_training_part() -> None:
    seq = np.arange(1, 101)  # items 1..100 in order: a window shows as consecutive numbers
    rng = np.random.default_rng(0)
    ends = set()
    for _ in range(200):
        (b,) = list(shifted_batches([seq], 1, rng, CPU, max_len=10, newest_prob=0.5))
        x, y = b["item_seq"][0], b["target"][0]
        assert torch.equal(y[:-1], x[1:]) and torch.all(torch.diff(x) == 1)  # one contiguous window, shifted
        ends.add(int(y[-1]))
    assert 100 in ends and len(ends) > 20  # the newest window, and many earlier ones
    assert max(ends) == 100  # nothing beyond the sequence it was given
    (b,) = list(shifted_batches([seq], 1, rng, CPU, max_len=10))  # default: always the newest window
    assert int(b["target"][0, -1]) == 100


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = lr_scheduler(opt, TrainConfig(epochs=10, lr_schedule="cosine", warmup_epochs=1), steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over one epoch
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # then monotone decay
    assert lrs[-1] < 0.001
    assert sched.lr_lambdas[0].finished(100) and not sched.lr_lambdas[0].finished(99)  # type: ignore[attr-defined]
    constant = lr_scheduler(opt, TrainConfig(epochs=10), steps_per_epoch=10).lr_lambdas[0]
    assert not constant.finished(10_000)  # type: ignore[attr-defined]  # a constant lr never anneals
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_scheduler(opt, TrainConfig(lr_schedule="step"), 10)


def test_wsd_schedule_holds_the_peak_then_decays_linearly_to_zero_by_the_budget_end() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    tc = TrainConfig(epochs=100, lr_schedule="wsd", warmup_epochs=1, decay_fraction=0.25)
    sched = lr_scheduler(opt, tc, steps_per_epoch=10)
    sched.lr_lambdas[0].end_at_epoch(9)  # the budget ends training after epoch 9: 90 steps
    lrs = []
    for _ in range(90):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # warm-up over one epoch
    # 80 steps after the warm-up; the last quarter (20 steps, from step 70) decays linearly.
    assert all(lr == pytest.approx(1.0) for lr in lrs[9:71])
    assert lrs[80] == pytest.approx(0.5) and opt.param_groups[0]["lr"] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    with pytest.raises(ValueError, match="decay_fraction"):
        lr_scheduler(opt, TrainConfig(lr_schedule="wsd", decay_fraction=0.0), 10)


def test_negative_weights_are_support_to_the_alpha() -> None:
    pop = np.array([0.0, 1.0, 4.0, 100.0])
    assert negative_weights(NextItemConfig(), pop) is None  # uniform by default
    assert negative_weights(NextItemConfig(neg_alpha=0), pop) is None
    assert negative_weights(NextItemConfig(pop_negatives=True), pop).tolist() == [0.0, 1.0, 4.0, 100.0]
    assert negative_weights(NextItemConfig(pop_negatives=True, neg_alpha=0.5), pop).tolist() == [
        0.0,
        1.0,
        2.0,
        10.0,
    ]
    with pytest.raises(ValueError, match="neg_alpha"):
        negative_weights(NextItemConfig(neg_alpha=-1), pop)


def test_negative_weights_mix_a_uniform_share() -> None:
    pop = np.array([0.0, 1.0, 4.0, 95.0])  # supp; row 0 = padding
    q = negative_weights(NextItemConfig(neg_alpha=1, neg_uniform=0.4), pop)
    # 0.4 / 3 per item + 0.6 * supp / 100; padding never drawn
    assert q.tolist() == pytest.approx([0.0, 0.4 / 3 + 0.006, 0.4 / 3 + 0.024, 0.4 / 3 + 0.57])
    assert float(q.sum()) == pytest.approx(1.0)
    assert negative_weights(NextItemConfig(neg_uniform=0.4), pop) is None  # alpha 0: uniform either way
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="neg_uniform"):
            negative_weights(NextItemConfig(neg_alpha=1, neg_uniform=bad), pop)


def test_cosine_ends_where_the_wall_clock_budget_will_stop_training() -> None:
    # 10 min budget at 70 s an epoch (evaluations included): the epoch crossing 600 s is the 9th.
    assert budget_last_epoch(elapsed_s=140.0, epochs_done=2, max_minutes=10) == 9
    assert budget_last_epoch(elapsed_s=700.0, epochs_done=10, max_minutes=10) == 11  # always ahead
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = lr_scheduler(opt, TrainConfig(epochs=100, lr_schedule="cosine"), steps_per_epoch=10)
    factor = sched.lr_lambdas[0]
    factor.end_at_epoch(4)  # the budget ends training long before epoch 100
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[20] == pytest.approx(0.5, abs=0.01)  # half-way through the 40 steps the budget allows
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # annealed by the end of epoch 4
    assert not factor.finished(39) and factor.finished(40)  # lr 0 from step 40: the run can stop
    factor.end_at_epoch(1000)  # never past the epochs planned
    assert factor.total == 100 * 10


@pytest.mark.parametrize("logq", ["negatives", "sampled"])
def test_sampled_softmax_logq_forms(logq: str) -> None:
    """Recompute the loss from the same draws: "negatives" corrects only the negatives by
    -log q; "sampled" corrects the positive too (the full-softmax estimator)."""
    from training import losses

    torch.manual_seed(0)
    h, table = torch.randn(5, 4), torch.randn(11, 4)
    pos = torch.tensor([1, 2, 3, 9, 10])
    pop = torch.arange(11, dtype=torch.float)  # row 0 never drawn
    torch.manual_seed(1)
    got = losses.sampled_softmax(h, pos, table, 6, pop, logq)
    torch.manual_seed(1)
    neg = torch.multinomial(pop, 6, replacement=True)
    log_q = torch.log(pop / pop.sum())
    pos_logit = (h * table[pos]).sum(-1) - (log_q[pos] if logq == "sampled" else 0)
    neg_logit = (h @ table[neg].T - log_q[neg]).masked_fill(neg[None] == pos[:, None], float("-inf"))
    want = -(pos_logit - torch.logsumexp(torch.cat([pos_logit[:, None], neg_logit], 1), 1)).mean()
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="logq"):
        losses.sampled_softmax(h, pos, table, 6, pop, "both")


def test_sampled_softmax_masks_every_copy_of_the_positive_and_matches_the_dense_form() -> None:
    """Duplicated negatives equal to the positive are all left out, gradients equal the dense
    (T, 1 + K) cross-entropy, and a row whose every negative is its positive stays finite."""
    from training import losses

    neg = torch.tensor([3, 1, 3, 2, 3, 1])
    pos = torch.tensor([3, 2, 4, 1])
    rows, cols = losses._collisions(neg, pos)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0), (0, 2), (0, 4), (1, 3), (3, 1), (3, 5)]

    torch.manual_seed(0)
    h, table = torch.randn(6, 4, dtype=torch.float64, requires_grad=True), torch.randn(6, 4, dtype=torch.float64)
    pos = torch.tensor([1, 2, 3, 4, 5, 5])
    torch.manual_seed(3)
    got = losses.sampled_softmax(h, pos, table, 40)
    (g_got,) = torch.autograd.grad(got, h)
    torch.manual_seed(3)
    neg = torch.randint(1, 6, (40,))
    logits = torch.cat([(h * table[pos]).sum(-1, keepdim=True), h @ table[neg].T], 1)
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(neg[None] == pos[:, None], float("-inf"))], 1)
    want = torch.nn.functional.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    (g_want,) = torch.autograd.grad(want, h)
    assert torch.allclose(got, want, atol=1e-12) and torch.allclose(g_got, g_want, atol=1e-12)

    only_pos = losses.sampled_softmax(h, torch.tensor([1]).expand(6), table[:2], 8)  # one item: all negatives = pos
    (g,) = torch.autograd.grad(only_pos, h)
    assert only_pos.item() == 0.0 and torch.isfinite(g).all()


def test_exclude_seen_ce_is_a_softmax_over_the_positive_and_unseen_items() -> None:
    from training import losses
    from training.tasks import row_items

    torch.manual_seed(0)
    table = torch.randn(9, 4)  # 8 items + padding
    seq = torch.tensor([[0, 3, 5], [2, 4, 6]])  # (B, L)
    target = torch.tensor([[3, 5, 7], [4, 6, 1]])
    seen = row_items(9, seq, target)  # (B, N+1)
    assert seen[0, [3, 5, 7]].all() and not seen[0, [1, 2, 4, 6, 8]].any()
    mask = target != 0
    h = torch.randn(2, 3, 4, requires_grad=True)
    rows = mask.nonzero(as_tuple=True)[0]
    got = losses.full_softmax_ce(h[mask], target[mask], table, exclude=seen, rows=rows)
    # By hand: each position's softmax holds its positive and the items its row never touched.
    want = []
    for (b, t), p in zip(mask.nonzero().tolist(), target[mask].tolist(), strict=True):
        cand = [p] + [i for i in range(1, 9) if not seen[b, i]]
        want.append(-torch.log_softmax(table[cand] @ h[b, t], 0)[0])
    assert torch.allclose(got, torch.stack(want).mean())
    # The other seen items get no gradient: the loss does not push them down.
    tab = table.clone().requires_grad_(True)
    losses.full_softmax_ce(h[mask][:1], target[mask][:1], tab, exclude=seen[rows][:1]).backward()
    assert tab.grad[[5, 7]].abs().sum() == 0 and tab.grad[[1, 2, 4]].abs().sum() > 0
    assert got < losses.full_softmax_ce(h[mask], target[mask], table)  # fewer negatives, lower loss


@pytest.mark.parametrize("chunk", [7, 40, 1 << 21])  # logits per chunk: runs split across chunks, or one chunk
def test_chunked_full_softmax_ce_matches_the_plain_formula_and_its_gradients(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    from training import losses

    monkeypatch.setattr(losses, "CE_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(3)
    n, t = 12, 23
    h = torch.randn(t, 5, generator=gen, dtype=torch.double, requires_grad=True)
    table = torch.randn(n + 1, 5, generator=gen, dtype=torch.double, requires_grad=True)
    bias = torch.randn(n + 1, generator=gen, dtype=torch.double, requires_grad=True)
    pos = torch.randint(1, n + 1, (t,), generator=gen)
    seen = torch.rand(4, n + 1, generator=gen) < 0.4  # (R, N+1) per-sequence masks
    rows = torch.tensor([0] * 6 + [2] * 9 + [1] * 3 + [2] * 5)  # runs of one sequence's positions

    def plain(excl: torch.Tensor | None) -> torch.Tensor:
        z = h @ table[1:].T + bias[1:]  # (T, N)
        if excl is not None:
            z = z.masked_fill(excl[:, 1:].scatter(1, (pos - 1)[:, None], False), float("-inf"))
        return F.cross_entropy(z, pos - 1)

    cases = [({}, None), ({"exclude": seen, "rows": rows}, seen[rows]), ({"exclude": seen[rows]}, seen[rows])]
    for kwargs, excl in cases:
        got = losses.full_softmax_ce(h, pos, table, bias, **kwargs)
        want = plain(excl)
        g_got = torch.autograd.grad(got, (h, table, bias))
        g_want = torch.autograd.grad(want, (h, table, bias))
        assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-12)
        for a, b in zip(g_got, g_want, strict=True):
            assert a.dtype == b.dtype and torch.allclose(a, b, atol=1e-12)
        assert g_got[1][0].abs().sum() == 0  # padding is never a candidate


def test_chunked_full_softmax_ce_stays_fp32_under_cpu_autocast() -> None:
    from training import losses

    h = torch.randn(6, 8, requires_grad=True)
    table = torch.randn(10, 8, requires_grad=True)
    pos = torch.tensor([1, 2, 3, 4, 5, 9])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.full_softmax_ce(h.to(torch.bfloat16), pos, table)
    assert got.dtype == torch.float32
    assert torch.allclose(got, losses.full_softmax_ce(h.to(torch.bfloat16).float(), pos, table), atol=1e-6)
    got.backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_exclude_seen_with_a_sampled_loss_is_refused() -> None:
    from training.tasks import NextItemTask

    with pytest.raises(ValueError, match="exclude_seen"):
        NextItemTask(50, "sampled", 16, exclude_seen=True)
