"""GET /recommend/{user_id}: history -> model indices -> ONNX user vector -> top-k."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.types import Scope

from app.api.deps import state_of
from app.api.schemas import (
    DiversifyQuery,
    ErrorOut,
    IdPath,
    MaxPerClusterQuery,
    ModelQuery,
    RecommendOut,
    TopK,
)
from app.bundles.served import UnknownModel
from app.ids import MAX_ID_LENGTH, valid_id
from app.serving import recommend as pipeline
from app.serving.diversity import ListShape
from app.serving.errors import Refused
from app.serving.recommend import Ask

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
    # level per request, about a fifth of this route's non-model CPU. Refused and UnknownModel
    # become 422 in app/api/errors.py.
    ask = Ask(user_id, k, model, exclude_seen, explain, ListShape(diversify, max_per_cluster))
    got = await pipeline.recommend(state_of(request), ask)
    return Response(got.json(), media_type="application/json")


# --- the pre-routed read (app.api.middleware.FastRead) ---------------------------------------------
# Most reads are GET /recommend/{id}?k=10: FastAPI's routing and per-parameter validation cost
# more CPU than the cached answer itself. A query string this parser reads without doubt goes
# straight to the pipeline; every other request (an error to report, escapes, a re-ranked list,
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
        got = await pipeline.recommend(scope["app"].state.seqrec, Ask(user_id, *params))
    except (Refused, UnknownModel):  # raised before any read or side effect: the route reports it
        return None
    return got.json()
