"""GET /recommend/{user_id}: history -> model indices -> ONNX user vector -> top-k."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from app.deps import state_of
from app.diversity import DiversifyQuery, ListShape, MaxPerClusterQuery
from app.explain import explain as explain_items
from app.registry import UnknownModel
from app.schemas import ErrorOut, IdPath, ModelQuery, RecommendOut, TopK
from app.stores import StoreUnavailable
from app.stores.base import read_history

router = APIRouter(tags=["recommend"])


@router.get(
    "/recommend/{user_id}",
    response_model=RecommendOut,
    responses={422: {"model": ErrorOut, "description": "Bad k, user id or unknown model"}},
)
async def recommend(
    request: Request,
    user_id: IdPath,
    k: TopK = 10,
    model: ModelQuery = None,
    exclude_seen: Annotated[bool, Query(description="Drop items already in the user's history.")] = True,
    explain: Annotated[bool, Query(description="Add each item's most contributing history events.")] = False,
    diversify: DiversifyQuery = None,
    max_per_cluster: MaxPerClusterQuery = None,
) -> Response:
    """Top-k next items for a user. Falls back to popularity when there is no usable history or the store is down."""
    # Flat parameters, no sub-dependencies (State, list_shape): FastAPI resolves each dependency
    # level per request, about a fifth of this route's non-model CPU.
    state = state_of(request)
    shape = ListShape(diversify, max_per_cluster)
    if k > state.settings.max_k:
        raise HTTPException(422, f"k must be at most {state.settings.max_k}")
    live = state.live
    variant = "explicit" if model is not None else "default"
    if model is None and live is not None and live.experiment is not None:
        assigned = live.experiment.assign(user_id)
        model, variant = assigned.bundle, assigned.name
    try:
        bundle = state.registry.get(model)
    except UnknownModel as exc:
        raise HTTPException(422, str(exc)) from exc
    want = shape.pool(bundle, k)  # more candidates when the list is re-ranked
    metrics = state.metrics
    reason = None
    t0 = time.perf_counter()
    cache = state.user_cache
    entry = None
    times: list[float] | None = None  # the events' times, read only for a bundle that uses them
    try:
        if cache is not None:
            history, times, entry = await cache.read(user_id, state.settings.max_history, bundle)
        else:
            history, times = await read_history(state.store, user_id, state.settings.max_history, bundle.needs_times)
    except StoreUnavailable:
        metrics.store_errors.labels("history").inc()
        history, times, reason = [], [], "store_unavailable"
    metrics.store_read.labels(state.store.kind).observe(time.perf_counter() - t0)
    seen, seen_times = bundle.encode_events(history, times)
    if len(seen) == 0:
        reason = reason or "no_history"
        metrics.fallbacks.labels(reason).inc()
        labels = bundle.popular[:want]  # nothing the model knows was seen, so nothing to exclude
        scores = bundle.popularity_score[labels - 1]
        source = "popularity"
    else:
        t1 = time.perf_counter()
        # (1, D); the cached vector only when it was computed from exactly this history and bundle
        if cache is None:
            user = bundle.user_vectors([seen], None if seen_times is None else [seen_times])
        else:
            user = cache.user_vector(user_id, bundle, seen, entry, seen_times)
        t2 = time.perf_counter()
        labels, scores = bundle.index.search(user, want, [seen] if exclude_seen else None)
        labels, scores = labels[0], scores[0]
        t3 = time.perf_counter()
        metrics.inference.labels(bundle.name).observe(t2 - t1)
        metrics.topk.labels(bundle.name).observe(t3 - t2)
        ok = labels > 0
        labels, scores = labels[ok], scores[ok]
        source = "model"
    labels, scores = shape.rerank(bundle, labels, scores, k)
    ids = bundle.external(labels)
    # Serialised here rather than by FastAPI: re-validating the RecommendOut that this code builds
    # costs more CPU than the top-k itself. The route's response_model stays the documented
    # contract, and the tests (schemathesis included) check every answer against it.
    body = {
        "user_id": user_id,
        "items": [{"item_id": i, "score": s} for i, s in zip(ids, scores.tolist(), strict=True)],
        "model": bundle.model,
        "bundle": bundle.name,
        "version": bundle.version,
        "source": source,
        "history_length": len(seen),
        "fallback": reason if source == "popularity" else None,
        "variant": variant,
    }
    if explain:  # popularity answers have no history to explain: empty lists
        why = (
            explain_items(
                bundle,
                seen,
                labels,
                state.settings.explain_n,
                times=seen_times,
                threads=state.settings.explain_threads,
                user=user[0],  # the history's own vector: the ablation graph does not recompute it
            )
            if source == "model"
            else None
        )
        for n, item in enumerate(body["items"]):
            item["because"] = why[n] if why else []
    if live is not None:
        live.served(user_id, bundle.name, variant, ids)  # in the background: never delays the answer
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")
