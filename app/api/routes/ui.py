"""The demo page at `/` and the three small read-only lookups it needs (history, titles, item search).

The page itself is static (app/static: plain HTML + JS, no build step, no CDN, works offline)
and calls the public API for everything else: /readyz for the loaded models, /recommend for
each of them, POST /events, and POST /items when the OpenAPI schema says the server has it.
Titles come from each bundle's optional item_text.json.
"""

from __future__ import annotations

import json
import pathlib
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from app.api.deps import State
from app.api.schemas import ErrorOut, IdPath
from app.bundles.bundle import Bundle
from app.stores.base import StoreUnavailable

router = APIRouter(tags=["demo"])
STATIC = pathlib.Path(__file__).resolve().parents[1] / "static"

_titles: dict[tuple[str, str], dict[str, str]] = {}  # (bundle path, version) -> item id -> text


class ItemOut(BaseModel):
    item_id: str
    title: str | None = Field(description="Item text from the bundle (title, genres...), when it has any.")


class HistoryOut(BaseModel):
    user_id: str
    items: list[ItemOut] = Field(description="The user's stored history, oldest first.")


def titles_of(bundle: Bundle) -> dict[str, str]:
    """The bundle's item_text.json, read once per bundle version (bundles without text: empty)."""
    key = (str(bundle.path), bundle.version)
    if key not in _titles:
        path = bundle.path / "item_text.json"
        try:
            raw = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            raw = {}
        _titles[key] = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    return _titles[key]


def _title(state: State, item_id: str) -> str | None:
    for b in state.registry.bundles.values():
        t = titles_of(b).get(item_id)
        if t is not None:
            return t
    return None


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> FileResponse:
    # Only the files shipped in app/static, by exact name: no path traversal possible.
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in files:
        raise HTTPException(404, "not found")
    return FileResponse(files[name])


@router.get(
    "/ui/history/{user_id}",
    response_model=HistoryOut,
    responses={503: {"model": ErrorOut, "description": "Store unreachable"}},
)
async def history(
    state: State,
    user_id: IdPath,
    n: Annotated[int, Query(ge=1, le=1000, description="Most recent items to return.")] = 50,
) -> HistoryOut:
    """The user's stored history with item titles (for the demo page)."""
    try:
        items = await state.store.history(user_id, min(n, state.settings.max_history))
    except StoreUnavailable as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "event store unavailable", {"Retry-After": "1"}
        ) from exc
    return HistoryOut(user_id=user_id, items=[ItemOut(item_id=i, title=_title(state, i)) for i in items])


@router.get("/ui/titles", response_model=list[ItemOut])
async def titles(
    state: State,
    id: Annotated[list[str], Query(max_length=200, description="Item ids (repeat the parameter).")],
) -> list[ItemOut]:
    """Titles of the given items (null when no loaded bundle has text for one)."""
    return [ItemOut(item_id=i, title=_title(state, i)) for i in id]


@router.get("/ui/items", response_model=list[ItemOut])
async def search_items(
    state: State,
    q: Annotated[str, Query(max_length=100, description="Case-insensitive substring of the title or id.")] = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ItemOut]:
    """Items of the default model matching `q`, most popular first (for picking events to add)."""
    b = state.registry.get(None)
    text = titles_of(b)
    needle = q.strip().lower()
    out: list[ItemOut] = []
    for label in b.popular.tolist():
        item = b.item_ids[label - 1]
        title = text.get(item)
        if not needle or needle in item.lower() or (title is not None and needle in title.lower()):
            out.append(ItemOut(item_id=item, title=title))
            if len(out) >= limit:
                break
    return out
