"""POST /items: register items known only by text; GET /items/{item_id}: what was registered."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from app.deps import ApiKey, State, WriteLimit
from app.items import ingest
from app.schemas import (
    ErrorOut,
    IdPath,
    ItemAdded,
    ItemsIn,
    ItemsOut,
    RegisteredItem,
    write_responses,
)
from app.stores import StoreUnavailable

router = APIRouter(tags=["items"])
MAX_ITEMS = 100  # a batch is encoded synchronously (text encoder): keep one request's work bounded


@router.post(
    "/items",
    response_model=ItemsOut,
    dependencies=[ApiKey, WriteLimit],
    responses=write_responses("Registry unreachable: nothing was registered, retry (idempotent)"),
)
async def post_items(body: ItemsIn, state: State) -> ItemsOut:
    """Register new items by text. Every text-capable model (UniSRec) encodes them at once, in every
    API process; the response names the models that can now recommend each item."""
    if len(body.items) > MAX_ITEMS:
        raise HTTPException(413, f"batch of {len(body.items)} items exceeds the limit of {MAX_ITEMS}")
    items = list({it.item_id: it.model_dump(exclude_none=True) for it in body.items}.values())
    try:
        await state.items.put(items)
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("items").inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"item registry unavailable, nothing registered; retry: {exc}",
            headers={"Retry-After": "1"},
        ) from exc
    held = await ingest(state.registry, items)
    return ItemsOut(registered=len(items), items=[ItemAdded(item_id=i, models=m) for i, m in held.items()])


@router.get(
    "/items/{item_id}",
    response_model=RegisteredItem,
    responses={404: {"model": ErrorOut, "description": "No such registered item"}},
)
async def get_item(state: State, item_id: IdPath) -> RegisteredItem:
    """An item registered with POST /items, and the models in this process that hold it."""
    try:
        item = await state.items.get(item_id)
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("items").inc()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"item registry unavailable: {exc}") from exc
    if item is None:
        raise HTTPException(404, f"item {item_id!r} is not registered")
    models = [b.name for b in state.registry.bundles.values() if item_id in b.index_of]
    return RegisteredItem(**item, models=models)
