"""Statistics of an A/B experiment from its users' totals: intervals clustered by user, the
difference between variants, and an always-valid sequential test for the decision.

The split is by user, and one user's next events are not independent (a heavy rater makes many
of them, all alike), so the unit of the statistics is the user. Per user u of a variant: n_u its
scored events, m_u its sum of a metric (hits, NDCG, reciprocal ranks). A variant's metric is the
ratio of sums over its U users (users with at least one scored event),

    R = Σ m_u / Σ n_u,

(the same number as the per-event mean) and its variance is the delta method's for a ratio of
sums (the cluster-robust variance, clusters = users):

    V(R) = U / (U - 1) · Σ (m_u - R n_u)² / (Σ n_u)²
         = U / (U - 1) · (Σ m² - 2 R Σ m·n + R² Σ n²) / (Σ n)²

so the sums Σn, Σn², Σm, Σm², Σm·n over users are all it needs (the ledger keeps them up to date
as users' totals grow). 95% interval: R ± 1.96 √V.

Difference of a variant T against the first variant C (disjoint users): Δ = R_T - R_C,
V(Δ) = V(R_T) + V(R_C), 95% interval Δ ± 1.96 √V(Δ).

Sequential test (mixture SPRT: Robbins 1970; Johari, Koomen, Pekelis & Walsh, "Always valid
inference", 2017): H0 Δ = 0, with Δ̂ ~ N(Δ, V) and the mixing distribution Δ ~ N(0, τ²),

    Λ = √(V / (V + τ²)) · exp( τ² Δ̂² / (2 V (V + τ²)) ).

Under H0, Λ over growing data is a nonnegative martingale of mean 1, so the chance that it ever
reaches 1/α is at most α (Ville's inequality): p = min(1, 1/Λ) is an always-valid p-value, and
the verdict may be read at every look, as often as wanted, without inflating false positives
(V is estimated, so this holds as the normal approximation does: `min_users` keeps the test
quiet until each variant has enough users). The verdict: "treatment better" (Δ̂ > 0) or
"control better" (Δ̂ < 0) once p <= α / (number of comparisons), else "no difference yet".
τ = `effect` × R_C: the relative difference the test is tuned to detect soonest (any size is
detected eventually; the bound on false positives holds for every τ).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
METRIC_SUMS = {"hit_rate": "hits", "ndcg": "ndcg", "mrr": "rr"}  # API metric -> per-user total
TREATMENT_BETTER, CONTROL_BETTER, UNDECIDED = "treatment better", "control better", "no difference yet"


@dataclass(frozen=True)
class Arm:
    """One variant's sums over its users (the ledger's SUMS)."""

    sums: Mapping[str, float]

    @classmethod
    def from_users(cls, rows: Iterable[Sequence[float]]) -> Arm:
        """From per-user totals (served, scored, hits, ndcg, rr): what the ledger keeps, computed at once."""
        s: dict[str, float] = dict.fromkeys(("users_served", "users", "served", "scored", "scored2"), 0.0)
        for served, n, *ms in rows:
            s["users_served"] += served > 0
            s["users"] += n > 0
            s["served"] += served
            s["scored"] += n
            s["scored2"] += n * n
            for name, m in zip(("hits", "ndcg", "rr"), ms, strict=True):
                s[name] = s.get(name, 0.0) + m
                s[f"{name}2"] = s.get(f"{name}2", 0.0) + m * m
                s[f"{name}_scored"] = s.get(f"{name}_scored", 0.0) + m * n
        return cls(s)

    def get(self, name: str) -> float:
        return float(self.sums.get(name, 0.0))

    @property
    def users(self) -> int:
        return round(self.get("users"))

    @property
    def users_served(self) -> int:
        return round(self.get("users_served"))


@dataclass(frozen=True)
class Estimate:
    mean: float | None
    var: float | None  # delta-method variance, clustered by user

    @property
    def ci95(self) -> tuple[float, float] | None:
        if self.mean is None or self.var is None:
            return None
        half = Z95 * math.sqrt(self.var)
        return (self.mean - half, self.mean + half)


def ratio(arm: Arm, metric: str) -> Estimate:
    """The metric's ratio of sums over the arm's users, with its user-clustered variance."""
    m = METRIC_SUMS[metric]
    n_sum, u = arm.get("scored"), arm.get("users")
    if n_sum <= 0:
        return Estimate(None, None)
    r = arm.get(m) / n_sum
    if u < 2:
        return Estimate(r, None)
    resid = arm.get(f"{m}2") - 2 * r * arm.get(f"{m}_scored") + r * r * arm.get("scored2")
    return Estimate(r, u / (u - 1) * max(resid, 0.0) / (n_sum * n_sum))


@dataclass(frozen=True)
class Decision:
    difference: float | None  # treatment - control
    ci95: tuple[float, float] | None
    relative: float | None  # difference / control
    likelihood_ratio: float | None  # the mixture likelihood ratio Λ
    p_value: float | None  # min(1, 1/Λ): always valid
    verdict: str


def msprt_log_lr(delta: float, var: float, tau2: float) -> float:
    """log Λ of the normal mixture SPRT (mixing variance tau2) at the estimate `delta` of variance `var`."""
    return 0.5 * math.log(var / (var + tau2)) + tau2 * delta * delta / (2 * var * (var + tau2))


def compare(
    control: Arm,
    treatment: Arm,
    metric: str = "hit_rate",
    alpha: float = 0.05,
    effect: float = 0.1,
    min_users: int = 100,
    comparisons: int = 1,
) -> Decision:
    """Treatment against control on `metric`: difference, interval, and the sequential test's verdict
    (at level alpha / comparisons: several variants are each compared with the first)."""
    c, t = ratio(control, metric), ratio(treatment, metric)
    if c.mean is None or t.mean is None:
        return Decision(None, None, None, None, None, UNDECIDED)
    delta = t.mean - c.mean
    relative = delta / c.mean if c.mean > 0 else None
    if c.var is None or t.var is None or c.var + t.var <= 0:
        return Decision(delta, None, relative, None, None, UNDECIDED)
    var = c.var + t.var
    half = Z95 * math.sqrt(var)
    tau = effect * (c.mean if c.mean > 0 else max(t.mean, 1e-12))
    log_lr = msprt_log_lr(delta, var, tau * tau)
    p = 1.0 if log_lr <= 0 else math.exp(-log_lr)
    lr = math.exp(log_lr) if log_lr < 700 else math.inf
    verdict = UNDECIDED
    if min(control.users, treatment.users) >= min_users and p <= alpha / max(comparisons, 1):
        verdict = TREATMENT_BETTER if delta > 0 else CONTROL_BETTER
    return Decision(delta, (delta - half, delta + half), relative, lr, p, verdict)


# --- promotion: the policy that acts on the decision (SEQREC_ONLINE_PROMOTE, off by default) -----------
PROMOTE, WITHDRAW, HOLD = "promote", "withdraw", "hold"


@dataclass(frozen=True)
class Guardrails:
    """What a winning treatment must not worsen to become the default."""

    max_error_rate: float  # share of GET /recommend answers that failed (5xx) since the experiment started
    max_p99_ratio: float  # the treatment bundle's p99 model time over the control's
    min_coverage_ratio: float  # the treatment's catalogue coverage over the control's


@dataclass(frozen=True)
class Health:
    """One variant's guardrail measurements (None: not measured yet)."""

    p99_s: float | None = None
    coverage: float | None = None


@dataclass(frozen=True)
class Action:
    action: str  # PROMOTE, WITHDRAW or HOLD
    reason: str
    failed: tuple[str, ...] = ()  # the guardrails that failed (HOLD)


def decide(
    verdict: str, control: Health, treatment: Health, error_rate: float | None, guard: Guardrails
) -> Action | None:
    """What to do about a two-variant experiment, or None while the test has not decided: the
    treatment is withdrawn when it loses, promoted when it wins and every guardrail holds, held
    (kept in the experiment) when it wins but a guardrail fails."""
    if verdict == CONTROL_BETTER:
        return Action(WITHDRAW, "control better")
    if verdict != TREATMENT_BETTER:
        return None
    failed: dict[str, str] = {}
    if error_rate is not None and error_rate > guard.max_error_rate:
        failed["error_rate"] = f"error rate {error_rate:.4f} > {guard.max_error_rate:g}"
    if treatment.p99_s is not None and control.p99_s:
        ratio_p99 = treatment.p99_s / control.p99_s
        if ratio_p99 > guard.max_p99_ratio:
            failed["p99"] = f"p99 model time {ratio_p99:.2f}x the control's > {guard.max_p99_ratio:g}x"
    if treatment.coverage is not None and control.coverage:
        ratio_cov = treatment.coverage / control.coverage
        if ratio_cov < guard.min_coverage_ratio:
            failed["coverage"] = f"coverage {ratio_cov:.2f}x the control's < {guard.min_coverage_ratio:g}x"
    if failed:
        return Action(HOLD, "; ".join(failed.values()), tuple(failed))
    return Action(PROMOTE, "treatment better; guardrails hold")
