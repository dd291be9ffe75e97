"""The experiment statistics (app/serving/abtest.py): the clustered variance against a direct
computation, the sequential test's verdicts, and its false positives on simulated A/A splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.serving.abtest import CONTROL_BETTER, TREATMENT_BETTER, UNDECIDED, Arm, compare, msprt_log_lr, ratio


def users(rng: np.random.Generator, n_users: int, lift: float = 0.0) -> list[tuple[float, ...]]:
    """Per-user totals (served, scored, hits, ndcg, rr) of a heavy-tailed population: a few users
    make many events, and each user has their own hit rate."""
    out = []
    for _ in range(n_users):
        n = max(1, int(rng.lognormal(2.5, 1.0)))
        p = min(1.0, rng.beta(2, 8) * (1 + lift))
        hits = rng.binomial(n, p)
        ranks = rng.integers(1, 11, size=hits)
        out.append((n + 1.0, float(n), float(hits), float((1 / np.log2(ranks + 1)).sum()), float((1 / ranks).sum())))
    return out


def test_ratio_and_its_clustered_variance_match_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    rows = users(rng, 300)
    est = ratio(Arm.from_users(rows), "ndcg")
    n = np.array([r[1] for r in rows])
    m = np.array([r[3] for r in rows])
    r_hat = m.sum() / n.sum()
    u = len(rows)
    var = u / (u - 1) * ((m - r_hat * n) ** 2).sum() / n.sum() ** 2
    assert est.mean == pytest.approx(r_hat) and est.var == pytest.approx(var)
    lo, hi = est.ci95  # type: ignore[misc]
    assert hi - lo == pytest.approx(2 * 1.959963984540054 * math.sqrt(var))
    # Users with served lists but no scored event change nothing but the count of users served.
    more = Arm.from_users([*rows, (3.0, 0.0, 0.0, 0.0, 0.0)])
    assert ratio(more, "ndcg") == est and more.users_served == u + 1 and more.users == u


def test_the_mixture_likelihood_ratio() -> None:
    # No difference: Λ = sqrt(V / (V + τ²)) < 1, so p = 1.
    assert math.exp(msprt_log_lr(0.0, 1.0, 3.0)) == pytest.approx(0.5)
    # Grows with the estimate: z = 4 with V = τ² gives log Λ = 0.5 log(1/2) + 16 / 4.
    assert msprt_log_lr(4.0, 1.0, 1.0) == pytest.approx(0.5 * math.log(0.5) + 4.0)


def test_verdicts_follow_the_sign_and_wait_for_enough_users() -> None:
    rng = np.random.default_rng(2)
    control = Arm.from_users(users(rng, 3000))
    better = Arm.from_users(users(rng, 3000, lift=0.25))
    assert compare(control, better).verdict == TREATMENT_BETTER
    assert compare(better, control).verdict == CONTROL_BETTER
    d = compare(control, better)
    assert d.ci95 is not None and d.ci95[0] > 0 and d.p_value is not None and d.p_value < 0.05
    assert d.relative == pytest.approx(d.difference / ratio(control, "hit_rate").mean)  # type: ignore[operator]
    assert compare(control, better, min_users=5000).verdict == UNDECIDED  # too few users yet
    # Several variants against the first: each at alpha / comparisons.
    many = math.ceil(0.05 / d.p_value) + 1
    assert compare(control, better, comparisons=many).verdict == UNDECIDED
    assert compare(control, better, comparisons=max(1, math.floor(0.05 / d.p_value))).verdict == TREATMENT_BETTER
    empty = Arm({})
    assert compare(empty, better) == compare(empty, better)  # no data: no decision, no error
    assert compare(empty, better).verdict == UNDECIDED and compare(empty, better).difference is None


def test_a_a_splits_rarely_decide_and_clustered_intervals_hold_their_level() -> None:
    """400 A/A experiments on a heavy-tailed population: the user-clustered 95% interval of the
    difference excludes 0 about 5% of the time; intervals that treat events as independent do so
    far more often; the sequential test, read at 10 growing sizes, decides at most ~alpha."""
    rng = np.random.default_rng(3)
    clustered = naive = sequential = 0
    reps = 400
    for _ in range(reps):
        pop = users(rng, 400)
        side = rng.random(len(pop)) < 0.5
        arms = [[r for r, s in zip(pop, side, strict=True) if s == t] for t in (False, True)]
        d = compare(Arm.from_users(arms[0]), Arm.from_users(arms[1]), min_users=20)
        clustered += d.ci95 is not None and (d.ci95[0] > 0 or d.ci95[1] < 0)
        p = [sum(r[2] for r in a) / sum(r[1] for r in a) for a in arms]
        n = [sum(r[1] for r in a) for a in arms]
        se = math.sqrt(sum(pi * (1 - pi) / ni for pi, ni in zip(p, n, strict=True)))
        naive += abs(p[1] - p[0]) > 1.96 * se
        looks = [
            compare(Arm.from_users(arms[0][:k]), Arm.from_users(arms[1][:k]), min_users=20).verdict
            for k in range(20, 201, 20)
        ]
        sequential += any(v != UNDECIDED for v in looks)
    assert 0.015 <= clustered / reps <= 0.09, clustered
    assert naive / reps > 0.2, naive  # the events of one user are not independent
    assert sequential / reps <= 0.06, sequential


def test_the_promotion_policy_decides_by_the_verdict_and_the_guardrails() -> None:
    from app.serving.abtest import HOLD, PROMOTE, WITHDRAW, Guardrails, Health, decide

    guard = Guardrails(max_error_rate=0.01, max_p99_ratio=1.5, min_coverage_ratio=0.8)
    ok_c, ok_t = Health(p99_s=0.002, coverage=0.5), Health(p99_s=0.0025, coverage=0.45)
    assert decide(UNDECIDED, ok_c, ok_t, 0.0, guard) is None
    assert decide(CONTROL_BETTER, ok_c, ok_t, 0.5, guard).action == WITHDRAW  # type: ignore[union-attr]
    win = decide(TREATMENT_BETTER, ok_c, ok_t, 0.001, guard)
    assert win is not None and win.action == PROMOTE and win.failed == ()
    slow = decide(TREATMENT_BETTER, ok_c, Health(p99_s=0.004, coverage=0.1), 0.02, guard)
    assert slow is not None and slow.action == HOLD and slow.failed == ("error_rate", "p99", "coverage")
    assert "p99 model time 2.00x" in slow.reason and "coverage 0.20x" in slow.reason
    # Nothing measured yet (no traffic in the window, no histogram): the guardrail does not block.
    assert decide(TREATMENT_BETTER, Health(), Health(), None, guard).action == PROMOTE  # type: ignore[union-attr]
