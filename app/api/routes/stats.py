"""GET /stats/online: how the served recommendations fared against what users did next."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from app.api.deps import State
from app.api.schemas import ErrorOut
from app.serving.online import summarize

router = APIRouter(tags=["online evaluation"])


class VariantStats(BaseModel):
    bundle: str
    variant: str = Field(description="Experiment variant; `default` outside an experiment, `explicit` for ?model=.")
    served: int = Field(description="Lists served (and remembered) in the window.")
    scored: int = Field(description="Served lists followed by the user's next event, which scored them.")
    hits: int = Field(description="Scored lists that held the next item within the top k.")
    hit_rate: float | None = Field(description="hits / scored (HR@k); null before anything was scored.")
    hit_rate_ci95: tuple[float, float] | None = Field(description="95% Wilson interval of the hit rate.")
    mrr: float | None = Field(description="Mean reciprocal rank of the next item (0 when not served).")
    ndcg: float | None = Field(description="Mean NDCG@k of the next item.")
    distinct_items: int = Field(description="Distinct items served in the window (approximate with Redis).")
    coverage: float | None = Field(description="distinct_items / catalogue size of the bundle (null if not loaded).")


class OnlineStatsOut(BaseModel):
    window_minutes: int
    k: int = Field(description="Cut-off of hit@k and NDCG@k (SEQREC_ONLINE_K).")
    unserved_events: int = Field(description="Events with no remembered list before them: not counted as misses.")
    experiment: str | None = Field(description="The experiment now splitting the traffic, if any.")
    variants: list[VariantStats]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


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
    """Online HR@k, MRR, NDCG@k and catalogue coverage per bundle and variant over a window."""
    live = state.live
    if live is None or not live.tracking:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "online tracking is off (SEQREC_ONLINE_TRACKING)")
    try:
        counts, distinct = await live.window(minutes)
    except Exception as exc:  # store errors of any kind: report plainly, never a 500
        state.metrics.store_errors.labels("online_stats").inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"online statistics unavailable: {type(exc).__name__}"
        ) from None
    reg = state.registry

    def catalogue(name: str) -> int | None:
        b = reg.bundles.get(name)
        return len(b.item_ids) if b is not None else None

    unserved, rows = summarize(counts, distinct, catalogue)
    return OnlineStatsOut(
        window_minutes=minutes,
        k=live.k,
        unserved_events=unserved,
        experiment=state.experiment.spec if state.experiment else None,
        variants=[VariantStats(**r, hit_rate_ci95=wilson(r["hits"], r["scored"])) for r in rows],
    )
