"""GET /recommend/{user_id}: history -> model indices -> ONNX user vector -> top-k; POST /recommend:
the same for an anonymous visitor's items (nothing stored, no user id). Both obey the request's rules:
filter, exclusions, availability and the deployment's named rules (docs/shop.md)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote_plus

from fastapi import APIRouter, Query, Request, Response
from starlette.types import Scope

from app.api.deps import state_of
from app.api.errors import invalid
from app.api.schemas import (
    MAX_FILTER_CHARS,
    DiversifyQuery,
    ErrorOut,
    ExcludeQuery,
    FilterQuery,
    IdPath,
    IncludeUnavailableQuery,
    MaxPerClusterQuery,
    ModelQuery,
    RecommendOut,
    RuleQuery,
    SequenceIn,
    SequenceOut,
    TopK,
)
from app.bundles.registry import UnknownModel
from app.ids import MAX_ID_LENGTH, valid_id
from app.serving import recommend as pipeline
from app.serving.catalog import Wanted
from app.serving.diversity import ListShape
from app.serving.errors import Refused
from app.serving.events import event_types
from app.serving.filters import FilterError
from app.serving.recommend import Ask, Recommendation

router = APIRouter(tags=["recommend"])


_REFUSED = {
    "model": ErrorOut,
    "description": "Bad k, id or unknown model; a filter that does not parse, names an unknown attribute or "
    "compares a value of another kind (`filter: unknown attribute 'colour' at character 1`); an unknown rule",
}


async def _answer(request: Request, ask: Ask, where: str) -> Recommendation:
    """The pipeline's answer; a bad filter is a 422 naming the token and its position (app/serving/filters.py)."""
    try:
        return await pipeline.recommend(state_of(request), ask)
    except FilterError as exc:
        raise invalid((where, "filter"), f"filter: {exc}") from None


@router.get("/recommend/{user_id}", response_model=RecommendOut, responses={422: _REFUSED})
async def recommend(
    request: Request,
    user_id: IdPath,
    k: TopK = 10,
    model: ModelQuery = None,
    exclude_seen: Annotated[bool, Query(description="Drop items already in the user's history.")] = True,
    explain: Annotated[bool, Query(description="Add each item's most contributing history events.")] = False,
    diversify: DiversifyQuery = None,
    max_per_cluster: MaxPerClusterQuery = None,
    filter: FilterQuery = None,
    exclude: ExcludeQuery = None,
    include_unavailable: IncludeUnavailableQuery = False,
    rule: RuleQuery = None,
) -> Response:
    """Top-k next items for a user. Falls back to popularity when there is no usable history or the store is down.
    Only items the rules allow: `filter`, `exclude`, the deployment's rules and availability (docs/shop.md);
    exactly k whenever k such items exist."""
    # Flat parameters, no sub-dependencies (State, list_shape): FastAPI resolves each dependency
    # level per request, about a fifth of this route's non-model CPU. Refused and UnknownModel
    # become 422 in app/api/errors.py.
    wanted = Wanted(filter, tuple(exclude or ()), include_unavailable, rule)
    ask = Ask(user_id, k, model, exclude_seen, explain, ListShape(diversify, max_per_cluster), wanted)
    got = await _answer(request, ask, "query")
    return Response(got.json(), media_type="application/json")


@router.post("/recommend", response_model=SequenceOut, responses={422: _REFUSED})
async def recommend_sequence(request: Request, body: SequenceIn) -> Response:
    """Top-k next items for an anonymous visitor: the items they touched in, a list out, nothing stored and no
    user id. The same rules apply; the answer is the one GET /recommend gives a user with this history.
    More items than SEQREC_MAX_HISTORY: 422; none, or none the model knows: the most popular items.
    With `types`, items of a negative type (`dislike`) are not read and never returned; an unknown type: 422."""
    limit = state_of(request).settings.max_history
    if len(body.items) > limit:
        raise invalid(("body", "items"), f"at most {limit} items (SEQREC_MAX_HISTORY); send the newest")
    if body.types is not None:
        known = event_types(state_of(request).settings)
        for pos, t in enumerate(body.types):
            if not known.known(t):  # the allowed names, never the input
                raise invalid(("body", "types", pos), known.refusal)
    wanted = Wanted(body.filter, tuple(body.exclude), body.include_unavailable, body.rule)
    times = tuple(body.times) if body.times is not None else None
    types = tuple(body.types) if body.types is not None else None
    history = tuple(body.items)
    ask = Ask(None, body.k, body.model, body.exclude_seen, wanted=wanted, history=history, times=times, types=types)
    got = await _answer(request, ask, "body")
    return Response(got.json(), media_type="application/json")


# --- the pre-routed read (app.api.middleware.FastRead) ---------------------------------------------
# Most reads are GET /recommend/{id}?k=10: FastAPI's routing and per-parameter validation cost
# more CPU than the cached answer itself. A query string this parser reads without doubt goes
# straight to the pipeline; every other request (an error to report, escapes, a re-ranked list,
# unusual spellings) is left to the route above, so the documented validation stays FastAPI's.
PREFIX = "/recommend/"
_BOOL = {b"true": True, b"false": False, b"1": True, b"0": False}
_PLAIN = frozenset({b"k", b"model", b"exclude_seen", b"explain"})
# Parameters the route validates (re-ranking, rules): such a request is not plain.
_ROUTED = frozenset({b"diversify", b"max_per_cluster", b"exclude", b"include_unavailable", b"rule"})
_DEFAULTS = (10, None, True, False, None)  # the route's defaults, in the order of `plain_query`


def plain_query(query: bytes) -> tuple[int, str | None, bool, bool, str | None] | None:
    """(k, model, exclude_seen, explain, filter) of a plainly well-formed query string, else None."""
    if not query:
        return _DEFAULTS
    k, model, exclude_seen, explain, filter_ = _DEFAULTS
    names: set[bytes] = set()
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name in names or not pair.isascii():
            return None
        names.add(name)
        if name == b"filter":  # the one parameter read percent-decoded (quotes, spaces, parentheses)
            filter_ = _filter_value(value)
            if filter_ is None:
                return None
            continue
        if b"%" in pair or b"+" in pair:
            return None
        if name not in _PLAIN:
            if name in _ROUTED:
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
    return k, model, exclude_seen, explain, filter_


def _filter_value(value: bytes) -> str | None:
    """A filter as the route would read it (form-decoded UTF-8), or None when in any doubt."""
    try:
        text = unquote_plus(value.decode("ascii"), encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    if not text.strip() or len(text) > MAX_FILTER_CHARS:
        return None
    return text


async def plain_answer(scope: Scope) -> bytes | None:
    """The body for a plain GET /recommend/{user_id} (see above), or None to let the route answer."""
    user_id: str = scope["path"][len(PREFIX) :]
    if len(user_id) > MAX_ID_LENGTH or "/" in user_id or not valid_id(user_id):
        return None
    params = plain_query(scope["query_string"])
    if params is None:
        return None
    try:
        k, model, exclude_seen, explain, filter_ = params
        ask = Ask(user_id, k, model, exclude_seen, explain, wanted=Wanted(filter=filter_))
        got = await pipeline.recommend(scope["app"].state.seqrec, ask)
    except (Refused, UnknownModel, FilterError):  # raised before any read or side effect: the route reports it
        return None
    return got.json()
