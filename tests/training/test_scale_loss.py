"""Training and evaluation at catalogue scale: the automatic loss, the sampled softmax's logQ
correction, and full-ranking evaluation a block of items at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import losses
from training.config import AUTO_NEGATIVES, NextItemConfig, TrainConfig, describe_loss, resolve_loss
from training.evaluate import chunked_target_ranks, full_rank_eval, target_ranks
from training.tasks import NextItemTask
from training.train import train
from training.zoo import build_model, get_spec, resolve


def test_auto_loss_is_the_full_softmax_up_to_the_threshold_and_sampled_beyond() -> None:
    tc, task = TrainConfig(loss="auto", ce_max_items=1000), NextItemConfig()
    small, small_task = resolve_loss(tc, task, 1000)
    assert small.loss == "ce" and small_task == task
    big, big_task = resolve_loss(tc, task, 1001)
    assert big.loss == "sampled" and big.num_negatives == AUTO_NEGATIVES
    assert isinstance(big_task, NextItemConfig) and big_task.pop_negatives  # popularity draws, logQ-corrected
    # The run's own choices stay: more negatives, a uniform draw, an explicit loss.
    more, _ = resolve_loss(TrainConfig(loss="auto", ce_max_items=10, num_negatives=9000), task, 11)
    assert more.num_negatives == 9000
    _, uniform = resolve_loss(tc, NextItemConfig(neg_alpha=0.0), 5000)
    assert isinstance(uniform, NextItemConfig) and not uniform.pop_negatives and uniform.neg_alpha == 0.0
    assert resolve_loss(TrainConfig(loss="ce", ce_max_items=10), task, 5000)[0].loss == "ce"
    assert "sampled softmax over 4,096" in describe_loss(tc, task, 5000) and describe_loss(small, task, 5) == ""


def test_sasrec_defaults_to_auto_and_its_task_follows_the_catalogue_size() -> None:
    _, tc, task_cfg = resolve("sasrec")
    assert tc.loss == "auto" and TrainConfig().loss == "auto"  # the default lives in TrainConfig only
    spec = get_spec("sasrec")
    for items, want in [(tc.ce_max_items, "ce"), (tc.ce_max_items + 1, "sampled")]:
        model_cfg = spec.config_cls(num_items=items, max_len=4, dim=8)
        task = spec.make_task(model_cfg, tc, task_cfg, np.ones(items + 1, np.float32))
        assert isinstance(task, NextItemTask) and task.loss_name == want
        assert (task.popularity is not None) == (want == "sampled")


def test_a_run_records_and_says_what_auto_chose(synthetic, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(
        "sasrec",
        synthetic,
        tmp_path / "run",
        model_overrides={"max_len": 10, "dim": 8, "num_layers": 1},
        train_overrides={"epochs": 1, "batch_size": 64, "ce_max_items": synthetic.num_items - 1},
        progress=False,
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train_config"]["loss"] == "auto" and config["loss"] == "sampled"
    assert f"loss auto: sampled softmax over {AUTO_NEGATIVES:,}" in capsys.readouterr().err


def _full_softmax_grad_without_positive(h: torch.Tensor, pos: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """d/dh of -z_pos + log sum_{j != pos} exp(z_j): what the sampled softmax's gradient tends to as
    K grows (the positive's own share of the sampled partition vanishes)."""
    h = h.clone().requires_grad_(True)
    z = (h @ table[1:].T).masked_fill(torch.nn.functional.one_hot(pos - 1, len(table) - 1).bool(), float("-inf"))
    loss = (-(h * table[pos]).sum(-1) + torch.logsumexp(z, 1)).mean()
    (g,) = torch.autograd.grad(loss, h)
    return g


def test_popularity_negatives_with_logq_give_the_full_softmax_gradient_and_without_it_do_not() -> None:
    torch.manual_seed(0)
    n, d, k = 30, 6, 200_000
    table = torch.randn(n + 1, d, dtype=torch.float64)
    h = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([1, 4, 9, 16, 25])
    pop = torch.cat([torch.zeros(1), torch.rand(n) ** 4 + 1e-3]).double()  # heavily skewed draws
    want = _full_softmax_grad_without_positive(h.detach(), pos, table)

    torch.manual_seed(1)
    (g_logq,) = torch.autograd.grad(losses.sampled_softmax(h, pos, table, k, pop), h)
    assert torch.allclose(g_logq, want, atol=0.01), (g_logq - want).abs().max()

    torch.manual_seed(1)  # the same draws, treated as if uniform: biased towards popular items
    neg = torch.multinomial(pop, k, replacement=True)
    z_neg = (h @ table[neg].T).masked_fill(neg[None] == pos[:, None], float("-inf"))
    z_pos = (h * table[pos]).sum(-1)
    biased = (torch.logaddexp(z_pos, torch.logsumexp(z_neg, 1)) - z_pos).mean()
    (g_biased,) = torch.autograd.grad(biased, h)
    assert (g_biased - want).abs().max() > 10 * (g_logq - want).abs().max()


def test_sampled_softmax_gradient_reaches_only_the_rows_it_used() -> None:
    """One gather for positives and negatives: the table's gradient is zero off the used rows and
    equals the two-gather form on them."""
    torch.manual_seed(0)
    table = torch.randn(50, 4, requires_grad=True)
    h = torch.randn(6, 4)
    pos = torch.tensor([1, 2, 3, 4, 5, 5])
    torch.manual_seed(2)
    (g,) = torch.autograd.grad(losses.sampled_softmax(h, pos, table, 8), table)
    torch.manual_seed(2)
    neg = torch.randint(1, 50, (8,))
    z = torch.cat(
        [(h * table[pos]).sum(-1, keepdim=True), (h @ table[neg].T).masked_fill(neg[None] == pos[:, None], -1e30)], 1
    )
    (g_want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, torch.zeros(6, dtype=torch.long)), table)
    assert torch.allclose(g, g_want, atol=1e-6)
    unused = torch.ones(50, dtype=torch.bool)
    unused[torch.cat([pos, neg])] = False
    assert g[unused].abs().max() == 0


@pytest.mark.parametrize("exclude", [True, False])
def test_chunked_ranks_equal_the_whole_score_matrix(exclude: bool) -> None:
    rng = np.random.default_rng(0)
    n, d, users = 997, 8, 41
    table = torch.randn(n + 2, d)  # an extra model-internal row (e.g. [mask]) past the catalogue
    vecs = torch.randn(users, d)
    hists = [rng.integers(1, n + 1, size=int(rng.integers(1, 30))) for _ in range(users)]
    targets = torch.as_tensor([int(h[0]) if u % 5 == 0 else int(rng.integers(1, n + 1)) for u, h in enumerate(hists)])
    seen = hists if exclude else None
    whole = target_ranks(vecs @ table.T, targets, seen, n)
    for chunk in (users, users * 10, users * 333, users * (n + 1)):  # blocks of 1, 10, 333 and all items
        assert torch.equal(chunked_target_ranks(vecs, table, targets, seen, n, chunk), whole), chunk


def test_full_rank_eval_of_a_model_gives_the_same_ranks_chunked(synthetic) -> None:
    torch.manual_seed(0)
    model = build_model("sasrec", synthetic.num_items, {"max_len": 10, "dim": 8, "num_layers": 1}).eval()
    hists = [s[:-1] for s in synthetic.sequences()]
    targets = np.array([s[-1] for s in synthetic.sequences()])
    args = (hists, targets, synthetic.num_items, model.max_len, 64)
    want, want_ranks = full_rank_eval(model.score, *args, return_ranks=True)
    got, got_ranks = full_rank_eval(
        model, *args, return_ranks=True, item_table=model.item_vectors(), chunk_elements=500
    )
    assert np.array_equal(got_ranks, want_ranks) and got == want
    _, small = full_rank_eval(model, *args, return_ranks=True, item_table=model.item_vectors())  # one block
    assert np.array_equal(small, want_ranks)


def test_in_batch_negatives_covering_the_catalogue_give_exactly_the_full_softmax() -> None:
    """With no drawn negatives and a batch whose targets hold every item many times over, each
    item is a candidate once with the same share 1/N: logQ as the sampled-softmax estimator
    (logq="sampled") then leaves the full softmax itself."""
    torch.manual_seed(0)
    n = 12
    table = torch.randn(n + 1, 5, dtype=torch.float64)
    pos = torch.arange(1, n + 1).repeat(300)  # every item, often: P(in the batch) = 1
    h = torch.randn(len(pos), 5, dtype=torch.float64)
    counts = torch.cat([torch.zeros(1), torch.ones(n)])
    got = losses.sampled_softmax(h, pos, table, 0, logq="sampled", in_batch=counts)
    want = torch.nn.functional.cross_entropy(h @ table[1:].T, pos - 1)
    assert torch.allclose(got, want, atol=1e-10)


def test_in_batch_negatives_join_the_drawn_ones_with_their_expected_share() -> None:
    """Recomputed by hand from the same draws: candidates = K popularity draws + the distinct
    targets; each candidate's logit less log r_j, r_j = (K q_j + 1 - (1 - p_j)^T) / (K + U)."""
    torch.manual_seed(0)
    h, table = torch.randn(4, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    pos = torch.tensor([2, 2, 5, 7])
    pop = torch.tensor([0, 8, 4, 2, 1, 1, 1, 1, 1], dtype=torch.float64)  # draw weights
    counts = torch.tensor([0, 1, 10, 1, 1, 3, 1, 6, 1], dtype=torch.float64)  # target frequencies
    torch.manual_seed(5)
    got = losses.sampled_softmax(h, pos, table, 6, pop, in_batch=counts)
    torch.manual_seed(5)
    drawn = torch.multinomial(pop, 6, replacement=True)
    cand = torch.cat([drawn, torch.tensor([2, 5, 7])])
    q, p = pop / pop.sum(), counts / counts.sum()
    r = (6 * q + 1 - (1 - p) ** 4) / len(cand)
    z_pos = (h * table[pos]).sum(-1)
    z_neg = (h @ table[cand].T - r[cand].log()).masked_fill(cand[None] == pos[:, None], float("-inf"))
    want = (torch.logaddexp(z_pos, torch.logsumexp(z_neg, 1)) - z_pos).mean()
    assert torch.allclose(got, want, atol=1e-10)
    with pytest.raises(ValueError, match="in_batch"):
        NextItemTask(5, "ce", in_batch=counts)


def test_task_in_batch_reaches_the_loss_with_the_training_counts() -> None:
    _, tc, task_cfg = resolve("sasrec", None, {"loss": "sampled", "num_negatives": 8}, {"in_batch": True})
    counts = np.arange(21, dtype=np.float32)
    task = get_spec("sasrec").make_task(get_spec("sasrec").config_cls(num_items=20), tc, task_cfg, counts)
    assert isinstance(task, NextItemTask) and task.in_batch is not None
    assert torch.equal(task.in_batch, torch.as_tensor(counts))
