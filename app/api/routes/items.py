"""POST /items: register items known only by text; GET / DELETE /items/{item_id}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from app.api.deps import ApiKey, State, WriteLimit
from app.api.errors import unavailable
from app.api.schemas import (
    ErrorOut,
    IdPath,
    ItemAdded,
    ItemDeleted,
    ItemsIn,
    ItemsOut,
    RegisteredItem,
    write_responses,
)
from app.serving.catalogue import add_encoded, encode, encoding_keys, holders, remove
from app.stores.base import StoreUnavailable

router = APIRouter(tags=["items"])
MAX_ITEMS = 100  # a batch is encoded synchronously (text encoder): keep one request's work bounded
_UNKNOWN: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No such registered item"}}


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
    reg = state.registry
    # Encoded here, once: the vectors are stored with the items, so the other processes (and
    # later reloads) read them instead of running the text encoder again.
    ready, fresh = await encode(reg, items, state.items)
    try:
        await state.items.put(items, fresh)
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("items").inc()
        raise unavailable("item registry", exc, "nothing registered") from exc
    held = add_encoded(reg, items, ready)
    return ItemsOut(registered=len(items), items=[ItemAdded(item_id=i, models=m) for i, m in held.items()])


@router.get(
    "/items/{item_id}",
    response_model=RegisteredItem,
    responses={**_UNKNOWN, 503: {"model": ErrorOut, "description": "Registry unreachable, retry (Retry-After)"}},
)
async def get_item(state: State, item_id: IdPath) -> RegisteredItem:
    """An item registered with POST /items, and the models in this process that hold it."""
    try:
        item = await state.items.get(item_id)
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("items").inc()
        raise unavailable("item registry", exc) from exc
    if item is None:
        raise HTTPException(404, "no registered item has this id")
    models = [b.name for b in state.registry.bundles.values() if item_id in b.index_of]
    return RegisteredItem(**item, models=models)


@router.delete(
    "/items/{item_id}",
    response_model=ItemDeleted,
    dependencies=[ApiKey, WriteLimit],
    responses={
        **_UNKNOWN,
        **{
            code: v
            for code, v in write_responses("Registry unreachable: nothing was deleted, retry (idempotent)").items()
            if code != 413  # no body to limit
        },
    },
)
async def delete_item(state: State, item_id: IdPath) -> ItemDeleted:
    """Unregister an item added with POST /items: no API process recommends it any more (the removal
    is announced to every process, like a registration); histories that hold it keep the event,
    models ignore it. Catalogue items of a bundle cannot be deleted (404)."""
    keys = encoding_keys(state.registry)
    # Who holds it, read before the deletion: its announcement can reach this process's own
    # follower (which removes it from the bundles) before the removal below runs.
    held = holders(state.registry, item_id)
    try:
        existed = await state.items.delete(item_id, keys)
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("items").inc()
        raise unavailable("item registry", exc, "nothing deleted") from exc
    if not existed:
        raise HTTPException(404, "no registered item has this id")
    removed = remove(state.registry, [item_id])
    return ItemDeleted(item_id=item_id, models=sorted(set(held) | set(removed)))
