"""GET /items/{item_id}/similar: the items nearest to one item in a bundle's vector space (cosine),
among those the request's rules allow (filter, exclusions, availability, the deployment's rules)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from app.api.deps import State
from app.api.errors import invalid
from app.api.schemas import (
    ErrorOut,
    ExcludeQuery,
    FilterQuery,
    IdPath,
    IncludeUnavailableQuery,
    ModelQuery,
    RuleQuery,
    TopK,
)
from app.bundles.spaces import OUTPUT_SPACE
from app.serving.catalog import NO_RULES, Wanted, top_eligible
from app.serving.errors import Refused
from app.serving.filters import FilterError

router = APIRouter(tags=["items"])


class SimilarItem(BaseModel):
    item_id: str
    score: float = Field(description="Cosine similarity to the queried item.")


class SimilarOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "item_id": "2571",
                    "items": [{"item_id": "1240", "score": 0.83}, {"item_id": "1196", "score": 0.79}],
                    "model": "sasrec",
                    "bundle": "sasrec-ml1m",
                    "version": "20261201-101500",
                    "space": "output",
                }
            ]
        }
    }

    item_id: str
    items: list[SimilarItem] = Field(description="Most similar first. Never the item itself.")
    model: str
    bundle: str
    version: str
    space: str = Field(description="The vector space searched (`output` = the item vectors the model scores with).")
    filtered: int | None = Field(
        None, description="Only when rules applied: how many of the model's items they removed (docs/shop.md)."
    )
    rules: Literal["applied", "stale", "not_applied"] | None = Field(
        None, description="Only when rules applied: as in GET /recommend."
    )


@router.get(
    "/items/{item_id}/similar",
    response_model=SimilarOut,
    responses={
        404: {"model": ErrorOut, "description": "The model does not know this item (or it is not in that space)"},
        422: {
            "model": ErrorOut,
            "description": "Bad k, item id, unknown model or space; a filter that does not parse or fit the "
            "catalogue (naming the token and its position); an unknown rule",
        },
    },
)
async def similar(
    state: State,
    item_id: IdPath,
    k: TopK = 10,
    model: ModelQuery = None,
    space: Annotated[
        str,
        Query(
            max_length=64,
            description="Vector space: `output` (item vectors; items registered by text included) or one the "
            "bundle was exported with, e.g. `layers4` (BERT4Rec's last four hidden layers).",
        ),
    ] = OUTPUT_SPACE,
    filter: FilterQuery = None,
    exclude: ExcludeQuery = None,
    include_unavailable: IncludeUnavailableQuery = False,
    rule: RuleQuery = None,
) -> Response:
    """Items most similar to one item: cosine similarity of item vectors, the item itself excluded. Only items
    the rules allow (`filter`, `exclude`, the deployment's rules, availability); k whenever k such items exist."""
    if k > state.settings.max_k:
        raise Refused(f"k must be at most {state.settings.max_k}")
    bundle = state.registry.get(model)  # UnknownModel: 422 (app/api/errors.py)
    # The answers name the bundle and its spaces, never the submitted values.
    if space not in bundle.spaces:
        raise Refused(f"space: not a space of bundle {bundle.name!r}; it has {', '.join(bundle.spaces)}")
    label = bundle.index_of.get(item_id)
    if label is None or not bundle.spaces[space].has(label):
        where = f"bundle {bundle.name!r}" + ("" if space == OUTPUT_SPACE else " (this space)")
        raise HTTPException(404, f"the item is not in {where}")
    rules = NO_RULES
    if state.catalog is not None:
        try:
            rules = state.catalog.rules(bundle, Wanted(filter, tuple(exclude or ()), include_unavailable, rule))
        except FilterError as exc:
            raise invalid(("query", "filter"), f"filter: {exc}") from None
    found = bundle.spaces[space]
    if rules.active:
        assert state.catalog is not None
        query, itself = found.unit(np.array([label])), np.array([label], np.int64)
        labels, scores, _ = top_eligible(
            found.index, found.unit, query, k, itself, rules, len(found), state.catalog.limits
        )
    else:
        labels, scores = found.neighbours(label, k)
    body: dict[str, object] = {
        "item_id": item_id,
        "items": [
            {"item_id": i, "score": s}
            for i, s in zip(bundle.external(labels), np.asarray(scores, np.float64).tolist(), strict=True)
        ],
        "model": bundle.model,
        "bundle": bundle.name,
        "version": bundle.version,
        "space": space,
    }
    if rules.state is not None:
        body["filtered"], body["rules"] = rules.filtered, rules.state
    # Serialised directly, as GET /recommend does: SimilarOut stays the documented contract.
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")
