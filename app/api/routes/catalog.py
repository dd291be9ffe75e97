"""The shop's catalogue: item attributes and availability (docs/shop.md).

POST /catalog/items (a batch, all or nothing), PUT / PATCH / DELETE / GET /catalog/items/{item_id}
(one item), GET /catalog (what this process serves: version, attributes, rules). Writes need the API
key; every API process serves a write within about SEQREC_CATALOG_POLL_S of its answer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.api.deps import ApiKey, State, WriteLimit
from app.api.errors import unavailable
from app.api.schemas import (
    CatalogAttributes,
    CatalogItemOut,
    CatalogItemsIn,
    CatalogStatusOut,
    CatalogWriteOut,
    ErrorOut,
    IdPath,
    write_responses,
)
from app.serving.catalog import Catalog
from app.serving.filters import ITEM_ID, RowError
from app.state import AppState
from app.stores.base import StoreUnavailable

router = APIRouter(tags=["catalog"])
_NOTHING_STORED = "Catalogue store unreachable: nothing was stored; retry (a write is idempotent)"
_ROWS_REFUSED = {
    "model": ErrorOut,
    "description": "A bad row (no or bad item_id, a value of the wrong kind, a bad attribute name): the batch is "
    "refused whole and every bad row is listed under `errors` (at most 20): `loc` names the row and the field.",
}
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "The catalogue has no record of this item"}
}
_EXAMPLE = {"available": False, "price": 59.0, "tags": ["sale", "summer"]}


def _catalog(state: AppState) -> Catalog:
    assert state.catalog is not None  # built by the lifespan
    return state.catalog


def refused_rows(errors: list[RowError], count: int, where: tuple[str | int, ...]) -> RequestValidationError:
    """The 422 of a refused batch: every bad row (up to the bound) with its field; nothing was stored."""
    found: list[dict[str, Any]] = [
        {"loc": [*where, e.row, e.field], "msg": e.msg, "type": "value_error"} for e in errors
    ]
    if found:
        more = f"; {count} problems in all, nothing stored" if count > 1 else "; nothing stored"
        found[0] = {**found[0], "msg": found[0]["msg"] + more}
    return RequestValidationError(found)


def _unreachable(state: AppState, exc: StoreUnavailable, consequence: str = "") -> HTTPException:
    state.metrics.store_errors.labels("catalog").inc()
    return unavailable("catalogue store", exc, consequence)


@router.post(
    "/catalog/items",
    response_model=CatalogWriteOut,
    dependencies=[ApiKey, WriteLimit],
    responses={**write_responses(_NOTHING_STORED), 422: _ROWS_REFUSED},
)
async def post_items(body: CatalogItemsIn, state: State) -> CatalogWriteOut:
    """Store whole records (attributes and availability) of up to SEQREC_CATALOG_MAX_BATCH items, all or
    nothing. Each replaces what the item had; ids no model knows are kept too (a later bundle may know them)."""
    if len(body.items) > state.settings.catalog_max_batch:
        limit = state.settings.catalog_max_batch
        raise HTTPException(413, f"batch of {len(body.items)} items exceeds the limit of {limit}")
    try:
        version, errors, count = await _catalog(state).put(list(body.items))
    except StoreUnavailable as exc:
        raise _unreachable(state, exc, "nothing stored") from exc
    if errors:
        raise refused_rows(errors, count, ("body", "items"))
    return CatalogWriteOut(stored=count, version=version)


def _one(item_id: str, attrs: dict[str, Any]) -> dict[str, Any]:
    if ITEM_ID in attrs:
        raise RequestValidationError(
            [{"loc": ["body", ITEM_ID], "msg": "the path names the item; leave item_id out", "type": "value_error"}]
        )
    return {ITEM_ID: item_id, **attrs}


def _written(item_id: str, version: int, record: dict[str, Any] | None) -> JSONResponse:
    return JSONResponse({"item_id": item_id, **(record or {}), "version": version})


@router.put(
    "/catalog/items/{item_id}",
    response_model=CatalogItemOut,
    dependencies=[ApiKey, WriteLimit],
    responses={**write_responses(_NOTHING_STORED), 422: _ROWS_REFUSED},
)
async def put_item(
    item_id: IdPath, state: State, attrs: Annotated[CatalogAttributes, Body(examples=[_EXAMPLE])]
) -> JSONResponse:
    """Replace one item's record; `available` defaults to true. Answers the record stored and the version."""
    try:
        version, errors, count = await _catalog(state).put([_one(item_id, attrs)])
    except StoreUnavailable as exc:
        raise _unreachable(state, exc, "nothing stored") from exc
    if errors:
        raise refused_rows(errors, count, ("body",))
    return _written(item_id, version, _catalog(state).table.record(item_id))


@router.patch(
    "/catalog/items/{item_id}",
    response_model=CatalogItemOut,
    dependencies=[ApiKey, WriteLimit],
    responses={**write_responses(_NOTHING_STORED), 422: _ROWS_REFUSED},
)
async def patch_item(
    item_id: IdPath,
    state: State,
    attrs: Annotated[CatalogAttributes, Body(examples=[{"available": False}, {"price": 49.0, "tags": None}])],
) -> JSONResponse:
    """Change some attributes of one item (null removes one; `{"available": false}` takes it off sale). An item
    without a record gets one. Answers the whole record after the change and the version."""
    try:
        _one(item_id, attrs)
        version, record, errors = await _catalog(state).merge(item_id, dict(attrs))
    except StoreUnavailable as exc:
        raise _unreachable(state, exc, "nothing changed") from exc
    if errors:
        raise refused_rows(errors, len(errors), ("body",))
    return _written(item_id, version, record)


@router.delete(
    "/catalog/items/{item_id}",
    response_model=CatalogWriteOut,
    dependencies=[ApiKey, WriteLimit],
    responses={
        **_UNKNOWN,
        **{code: v for code, v in write_responses(_NOTHING_STORED).items() if code != 413},
    },
)
async def delete_item(item_id: IdPath, state: State) -> CatalogWriteOut:
    """Forget an item's record: it keeps being served (available, without attributes) by the models that know it."""
    catalog = _catalog(state)
    try:
        if await catalog.store.get(item_id) is None:
            raise HTTPException(404, "the catalogue has no record of this item")
        version = await catalog.delete(item_id)
    except StoreUnavailable as exc:
        raise _unreachable(state, exc, "nothing deleted") from exc
    return CatalogWriteOut(stored=1, version=version)


@router.get(
    "/catalog/items/{item_id}",
    response_model=CatalogItemOut,
    responses={**_UNKNOWN, 503: {"model": ErrorOut, "description": "Catalogue store unreachable, retry (Retry-After)"}},
)
async def get_item(item_id: IdPath, state: State) -> JSONResponse:
    """One item's record as stored."""
    try:
        raw = await _catalog(state).store.get(item_id)
    except StoreUnavailable as exc:
        raise _unreachable(state, exc) from exc
    if raw is None:
        raise HTTPException(404, "the catalogue has no record of this item")
    return JSONResponse({"item_id": item_id, **json.loads(raw)})


@router.get("/catalog", response_model=CatalogStatusOut)
async def status(state: State) -> CatalogStatusOut:
    """What this process serves: the catalogue version, the attributes a filter may name, the deployment's rules."""
    return CatalogStatusOut(**_catalog(state).status())
