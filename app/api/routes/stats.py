"""GET /stats/online: how the served recommendations fared against what users did next, and the
running experiment's decision; GET /stats/promotions: what the promotion policy decided.

The router's lifespan (merged into the app's by FastAPI, entered after it, so the state exists)
hands the online tracking the running experiment, so per-user totals are kept per experiment,
and runs the promotion policy when SEQREC_ONLINE_PROMOTE is on: every `online_promote_check_s`
each process reads the test; on a decision one process (a claim in the ledger) installs the new
configuration exactly as POST /admin/reload does (stored and announced: every worker and replica
applies it) and records the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, status

from app.api.deps import State
from app.api.schemas import (
    ArmStats,
    ComparisonOut,
    ErrorOut,
    ExperimentTestOut,
    OnlineStatsOut,
    PromotionDecision,
    PromotionsOut,
    VariantStats,
)
from app.fleet.config import install_configuration, prepare_configuration, spec_of
from app.serving.abtest import HOLD, PROMOTE, Arm, Guardrails, Health, compare, decide, ratio
from app.serving.catalogue import catch_up
from app.serving.online import experiment_scope, summarize
from app.state import AppState

log = logging.getLogger("seqrec.app")


@asynccontextmanager
async def online_lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState | None = getattr(app.state, "seqrec", None)
    policy = None
    if state is not None and state.live is not None:
        s = state  # the experiment is replaced by reloads: read it at each answer
        state.live.experiment = lambda: s.experiment
        if state.settings.online_promote and state.live.tracking:
            scope = experiment_scope(s.experiment.spec, s.experiment.salt) if s.experiment else ""
            _baseline[id(state)] = (scope, *_recommend_answers(state))  # the error rate counts from here
            policy = asyncio.create_task(promotion_loop(state))
    try:
        yield
    finally:
        if policy is not None:
            policy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await policy
            _baseline.pop(id(state), None)


router = APIRouter(tags=["online evaluation"], lifespan=online_lifespan)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _clip(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if ci is None else (max(0.0, ci[0]), min(1.0, ci[1]))


async def experiment_test(state: AppState) -> ExperimentTestOut | None:
    """The running experiment since it started: per variant user-clustered statistics, and each
    variant against the first (app/serving/abtest.py)."""
    exp, live, cfg = state.experiment, state.live, state.settings
    if exp is None or live is None:
        return None
    scope, sums = await live.experiment_sums(exp)
    arms = {v.name: Arm(sums.get(v.name, {})) for v in exp.variants}
    rows = []
    for v in exp.variants:
        arm = arms[v.name]
        est = {m: ratio(arm, m) for m in ("hit_rate", "ndcg", "mrr")}
        rows.append(
            ArmStats(
                variant=v.name,
                bundle=v.bundle,
                users_served=arm.users_served,
                users=arm.users,
                served=round(arm.get("served")),
                scored=round(arm.get("scored")),
                **{m: e.mean for m, e in est.items()},
                **{f"{m}_ci95": _clip(e.ci95) for m, e in est.items()},
            )
        )
    first, others = exp.variants[0], exp.variants[1:]
    comparisons = []
    for v in others:
        d = compare(
            arms[first.name],
            arms[v.name],
            cfg.online_test_metric,
            cfg.online_test_alpha,
            cfg.online_test_effect,
            cfg.online_test_min_users,
            comparisons=len(others),
        )
        comparisons.append(
            ComparisonOut(
                variant=v.name,
                against=first.name,
                metric=cfg.online_test_metric,
                difference=d.difference,
                difference_ci95=d.ci95,
                relative=d.relative,
                likelihood_ratio=d.likelihood_ratio if d.likelihood_ratio != math.inf else None,
                p_value=d.p_value,
                verdict=d.verdict,
            )
        )
    starts = [s["start"] for s in sums.values() if "start" in s]
    return ExperimentTestOut(
        experiment=exp.spec,
        scope=scope,
        started_at=min(starts) if starts else None,
        metric=cfg.online_test_metric,
        alpha=cfg.online_test_alpha,
        effect=cfg.online_test_effect,
        min_users=cfg.online_test_min_users,
        variants=rows,
        comparisons=comparisons,
    )


@router.get(
    "/stats/online",
    response_model=OnlineStatsOut,
    responses={
        422: {"model": ErrorOut, "description": "Bad window"},
        503: {"model": ErrorOut, "description": "Online tracking is off or its store is unreachable"},
    },
)
async def online_stats(
    state: State,
    minutes: Annotated[int, Query(ge=1, le=1440, description="Window: the last N minutes (by server clock).")] = 60,
) -> OnlineStatsOut:
    """Online HR@k, MRR, NDCG@k, catalogue coverage and users per bundle and variant over a window;
    for a running experiment, its user-clustered statistics since it started and the sequential
    test's verdict."""
    live = state.live
    if live is None or not live.tracking:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "online tracking is off (SEQREC_ONLINE_TRACKING)")
    try:
        window = await live.window(minutes)
        test = await experiment_test(state)
    except Exception as exc:  # store errors of any kind: report plainly, never a 500
        state.metrics.store_errors.labels("online_stats").inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"online statistics unavailable: {type(exc).__name__}"
        ) from None
    reg = state.registry

    def catalogue(name: str) -> int | None:
        b = reg.bundles.get(name)
        return len(b.item_ids) if b is not None else None

    unserved, rows = summarize(window, catalogue)
    return OnlineStatsOut(
        window_minutes=minutes,
        k=live.k,
        unserved_events=unserved,
        experiment=state.experiment.spec if state.experiment else None,
        variants=[VariantStats(**r, hit_rate_ci95=wilson(r["hits"], r["scored"])) for r in rows],
        experiment_test=test,
    )


# --- the promotion policy (SEQREC_ONLINE_PROMOTE) ---------------------------------------------------------
# id(state) -> (experiment scope, answers, failures) when the experiment started (or the process did)
_baseline: dict[int, tuple[str, float, float]] = {}
_held: set[str] = set()  # the holds this process saw recorded (it asks the ledger once for each)


def _recommend_answers(state: AppState) -> tuple[float, float]:
    """(answers, 5xx answers) of GET /recommend in this process so far."""
    total = failed = 0.0
    for metric in state.metrics.request_latency.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("route", "").startswith("/recommend"):
                total += sample.value
                failed += sample.value if sample.labels.get("status", "").startswith("5") else 0.0
    return total, failed


def _p99(state: AppState, bundle: str) -> float | None:
    """p99 of a bundle's model time (ONNX + top-k) in this process: the upper edge of the histogram
    bucket that holds the 99th percentile, summed over the two stages."""
    total = 0.0
    for hist in (state.metrics.inference, state.metrics.topk):
        buckets = [
            (float(s.labels["le"]), s.value)
            for m in hist.collect()
            for s in m.samples
            if s.name.endswith("_bucket") and s.labels.get("model") == bundle
        ]
        if not buckets or buckets[-1][1] == 0:
            return None
        need = 0.99 * buckets[-1][1]
        total += next(le for le, n in sorted(buckets) if n >= need)
    return total


async def promote_once(state: AppState) -> dict[str, Any] | None:
    """Read the test of a running two-variant experiment and act on its decision (see the module's
    docstring); returns the decision recorded, or None."""
    exp, live, cfg = state.experiment, state.live, state.settings
    if exp is None or live is None or len(exp.variants) != 2:
        return None
    test = await experiment_test(state)
    if test is None or not test.comparisons:
        return None
    scope, cmp = test.scope, test.comparisons[0]
    answers, failed = _recommend_answers(state)
    base = _baseline.get(id(state))
    if base is None or base[0] != scope:
        base = _baseline[id(state)] = (scope, answers, failed)
    n = answers - base[1]
    error_rate = (failed - base[2]) / n if n > 0 else None
    window = await live.window(60)
    _, rows = summarize(window, lambda name: len(b.item_ids) if (b := state.registry.bundles.get(name)) else None)
    coverage = {r["variant"]: r["coverage"] for r in rows}
    control, treatment = exp.variants
    bundles = {v.name: state.registry.get(v.bundle).name for v in exp.variants}
    health = {v.name: Health(_p99(state, bundles[v.name]), coverage.get(v.name)) for v in exp.variants}
    guard = Guardrails(
        cfg.online_promote_max_error_rate, cfg.online_promote_max_p99_ratio, cfg.online_promote_min_coverage_ratio
    )
    decision = decide(cmp.verdict, health[control.name], health[treatment.name], error_rate, guard)
    if decision is None:
        return None
    action, reason = decision.action, decision.reason
    winner = treatment if action in (PROMOTE, HOLD) else control
    record: dict[str, Any] = {
        "at": time.time(),
        "experiment": exp.spec,
        "scope": scope,
        "action": action,
        "variant": treatment.name,
        "bundle": bundles[winner.name],
        "reason": reason,
        "metric": cmp.metric,
        "difference": cmp.difference,
        "difference_ci95": cmp.difference_ci95,
        "p_value": cmp.p_value,
        "guardrails": {
            "error_rate": error_rate,
            "p99_s_control": health[control.name].p99_s,
            "p99_s_treatment": health[treatment.name].p99_s,
            "coverage_control": health[control.name].coverage,
            "coverage_treatment": health[treatment.name].coverage,
        },
        "generation": None,
    }
    if action == HOLD:
        # once per experiment and set of failing guardrails, by one process
        held = f"hold:{scope}:{','.join(decision.failed)}"
        if held in _held or not await live.ledger.claim(held, cfg.online_experiment_ttl_s):
            _held.add(held)
            return None
        _held.add(held)
    elif not await live.ledger.claim(f"promote:{scope}", 10 * cfg.online_promote_check_s):
        return None  # another process acts on this decision
    else:
        record["generation"] = await _install_default(state, bundles[winner.name])
    await live.ledger.record(record)
    log.info("promotion policy: %s %s (%s): %s", action, treatment.name, bundles[winner.name], reason)
    return record


async def _install_default(state: AppState, bundle: str) -> int:
    """Serve `bundle` by default and end the experiment, everywhere: POST /admin/reload's steps."""
    items = state.items
    current = items.spec or spec_of([str(p) for p in state.settings.bundles], state.settings.default_model)
    spec = {**spec_of(current["bundles"], bundle), "experiment": ""}
    async with state.reload_lock:
        reg, split = await prepare_configuration(state, spec, "")
        await catch_up(items, reg)
        generation = await items.publish_config(spec)
        await install_configuration(state, reg, split, generation, spec)
    await items.ack(generation, "ok")
    state.metrics.reloads.labels("ok").inc()
    return generation


async def promotion_loop(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.settings.online_promote_check_s)
        try:
            await promote_once(state)
        except Exception as exc:  # a failing store or reload: logged, tried again at the next check
            log.warning("promotion policy: %s: %s", type(exc).__name__, exc)


@router.get("/stats/promotions", response_model=PromotionsOut, responses={503: {"model": ErrorOut}})
async def promotions(
    state: State, n: Annotated[int, Query(ge=1, le=100, description="The last n decisions.")] = 20
) -> PromotionsOut:
    """The promotion policy's settings and its decisions (promote, withdraw, hold), newest first."""
    cfg, live = state.settings, state.live
    if live is None or not live.tracking:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "online tracking is off (SEQREC_ONLINE_TRACKING)")
    try:
        decisions = await live.ledger.decisions(n)
    except Exception as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"decisions unavailable: {type(exc).__name__}"
        ) from None
    return PromotionsOut(
        enabled=cfg.online_promote,
        check_s=cfg.online_promote_check_s,
        metric=cfg.online_test_metric,
        guardrails={
            "max_error_rate": cfg.online_promote_max_error_rate,
            "max_p99_ratio": cfg.online_promote_max_p99_ratio,
            "min_coverage_ratio": cfg.online_promote_min_coverage_ratio,
        },
        decisions=[PromotionDecision(**d) for d in decisions],
    )
