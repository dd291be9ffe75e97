"""GET /recommend/{user_id}: history -> model indices -> ONNX user vector -> top-k."""

from __future__ import annotations

import json
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.types import Scope

from app.deps import state_of
from app.diversity import DiversifyQuery, ListShape, MaxPerClusterQuery
from app.explain import explain as explain_items
from app.registry import UnknownModel
from app.schemas import MAX_ID_LENGTH, ErrorOut, IdPath, ModelQuery, RecommendOut, TopK, valid_id
from app.state import AppState
from app.stores import StoreUnavailable
from app.stores.base import read_history
from app.userstate import Read

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
    shape = ListShape(diversify, max_per_cluster)
    body = await answer(state_of(request), user_id, k, model, exclude_seen, explain, shape)
    return Response(body, media_type="application/json")


async def answer(
    state: AppState, user_id: str, k: int, model: str | None, exclude_seen: bool, explain: bool, shape: ListShape
) -> bytes:
    """The JSON body of GET /recommend for validated parameters (HTTPException 422 for a k above
    the configured maximum or an unknown model): the route and the pre-routed fast path share it."""
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
    read: Read | None = None
    history: list[str] | None = []
    times: list[float] | None = None  # the events' times, read only for a bundle that uses them
    # A plain list (seen items excluded, no re-ranking, nothing to explain) may come whole from
    # the cache, when the history it was computed from is still the stored one.
    plain = k if exclude_seen and not explain and not shape.active else 0
    try:
        if cache is not None:
            read = await cache.read(user_id, state.settings.max_history, bundle, plain)
            history, times = read.history, read.times
        else:
            history, times = await read_history(state.store, user_id, state.settings.max_history, bundle.needs_times)
    except StoreUnavailable:
        metrics.store_errors.labels("history").inc()
        history, times, reason = [], [], "store_unavailable"
    metrics.store_read.labels(state.store.kind).observe(time.perf_counter() - t0)
    seen: np.ndarray | None = None
    seen_times: np.ndarray | None = None
    if read is not None and read.answer is not None:
        labels, scores, n_seen = read.answer.labels[:k], read.answer.scores[:k], read.answer.n_seen
        source = "model"
    else:
        seen, seen_times = bundle.encode_events(history or [], times)
        n_seen = len(seen)
    if seen is not None and n_seen == 0:
        reason = reason or "no_history"
        metrics.fallbacks.labels(reason).inc()
        labels = bundle.popular[:want]  # nothing the model knows was seen, so nothing to exclude
        scores = bundle.popularity_score[labels - 1]
        source = "popularity"
    elif seen is not None:
        t1 = time.perf_counter()
        # (1, D); the cached vector only when it was computed from exactly this history and bundle
        if cache is None or read is None:
            user = bundle.user_vectors([seen], None if seen_times is None else [seen_times])
        else:
            user = cache.user_vector(user_id, bundle, seen, read, seen_times)
        t2 = time.perf_counter()
        labels, scores = bundle.index.search(user, want, [seen] if exclude_seen else None)
        labels, scores = labels[0], scores[0]
        t3 = time.perf_counter()
        metrics.inference.labels(bundle.name).observe(t2 - t1)
        metrics.topk.labels(bundle.name).observe(t3 - t2)
        ok = labels > 0
        labels, scores = labels[ok], scores[ok]
        if cache is not None and read is not None and plain:
            cache.remember(user_id, bundle, read, labels, scores, n_seen)
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
        "history_length": n_seen,
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
    return json.dumps(body, separators=(",", ":")).encode()


# --- the pre-routed read (app.middleware.FastRead) ---------------------------------------------
# Most reads are GET /recommend/{id}?k=10: FastAPI's routing and per-parameter validation cost
# more CPU than the cached answer itself. A query string this parser reads without doubt goes
# straight to `answer`; every other request (an error to report, escapes, a re-ranked list,
# unusual spellings) is left to the route above, so the documented validation stays FastAPI's.
PREFIX = "/recommend/"
_BOOL = {b"true": True, b"false": False, b"1": True, b"0": False}
_PLAIN = frozenset({b"k", b"model", b"exclude_seen", b"explain"})
_DEFAULTS = (10, None, True, False)  # the route's defaults, in the order of `plain_query`


def plain_query(query: bytes) -> tuple[int, str | None, bool, bool] | None:
    """(k, model, exclude_seen, explain) of a plainly well-formed query string, else None."""
    if not query:
        return _DEFAULTS
    k, model, exclude_seen, explain = _DEFAULTS
    names: set[bytes] = set()
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if b"%" in pair or b"+" in pair or name in names or not pair.isascii():
            return None
        names.add(name)
        if name not in _PLAIN:
            if name in (b"diversify", b"max_per_cluster"):
                return None
            continue  # FastAPI ignores unknown parameters too
        if name == b"k":
            if not value.isdigit() or not 1 <= (k := int(value)) <= 1000:
                return None
        elif name == b"model":
            if not value or len(value) > MAX_ID_LENGTH:
                return None
            model = value.decode()
        else:
            flag = _BOOL.get(value)
            if flag is None:
                return None
            if name == b"explain":
                explain = flag
            else:
                exclude_seen = flag
    return k, model, exclude_seen, explain


async def plain_answer(scope: Scope) -> bytes | None:
    """The body for a plain GET /recommend/{user_id} (see above), or None to let the route answer."""
    user_id: str = scope["path"][len(PREFIX) :]
    if len(user_id) > MAX_ID_LENGTH or "/" in user_id or not valid_id(user_id):
        return None
    params = plain_query(scope["query_string"])
    if params is None:
        return None
    try:
        return await answer(scope["app"].state.seqrec, user_id, *params, ListShape(None, None))
    except HTTPException:  # raised before any read or side effect: the route reports it
        return None
