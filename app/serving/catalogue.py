"""Registered items reach the bundles: vectors read from the shared cache or encoded once, added to
every text-capable bundle, removed on deletion; a freshly loaded registry is brought up to date
before it is installed. What is stored, and how it is shared between processes: app/stores/items.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from app.bundles.registry import Registry
from app.stores.base import StoreUnavailable
from app.stores.items import Encoded, Item, ItemRegistry, text_hash

log = logging.getLogger("seqrec.app")
ENCODE_BATCH = 256
Ready = dict[str, dict[str, tuple[str, np.ndarray]]]  # bundle name -> item id -> (text hash, vector) to add


def holders(registry: Registry, item_id: str) -> list[str]:
    """The bundles that serve `item_id` as a registered (online) item."""
    return [b.name for b in _text_bundles(registry) if item_id in b.online]


def encoding_keys(registry: Registry) -> list[str]:
    """The keys under which the text-capable bundles' item vectors are shared."""
    return [b.encoding_key for b in _text_bundles(registry)]


def _text_bundles(registry: Registry) -> list[Any]:
    return [b for b in registry.bundles.values() if b.takes_text]


def _stale(bundle: Any, item_id: str, th: str) -> bool:
    """Whether `bundle` lacks the item, or holds it (added online) from another text."""
    if item_id not in bundle.index_of:
        return True
    return item_id in bundle.online and bundle.online[item_id] != th


async def encode(registry: Registry, items: list[Item], shared: ItemRegistry) -> tuple[Ready, Encoded]:
    """Vectors for the items that some text-capable bundle of `registry` lacks: read from the
    shared cache where present for this bundle version and text, encoded (off the event loop)
    otherwise. Returns (what to add per bundle, what had to be encoded: what the cache lacks)."""
    ready: Ready = {}
    fresh: Encoded = {}
    for bundle in _text_bundles(registry):
        texts = {it["item_id"]: bundle.item_text(it) for it in items}
        hashes = {i: text_hash(t) for i, t in texts.items()}
        # New to the bundle, or registered before with another text (then its vector changes too).
        texts = {i: t for i, t in texts.items() if _stale(bundle, i, hashes[i])}
        if not texts:
            continue
        try:
            cached = await shared.vectors(bundle.encoding_key, list(texts))
        except StoreUnavailable as exc:
            log.warning("item vector cache unreadable, encoding: %s", exc)
            cached = {}
        hit = {i: c for i, c in cached.items() if c[0] == hashes[i] and c[1].shape == (bundle.dim,)}
        miss = [i for i in texts if i not in hit]
        new: dict[str, tuple[str, np.ndarray]] = {}
        for start in range(0, len(miss), ENCODE_BATCH):
            ids = miss[start : start + ENCODE_BATCH]
            vecs = await asyncio.to_thread(bundle.encode_texts, [texts[i] for i in ids])
            new.update({i: (hashes[i], v) for i, v in zip(ids, vecs, strict=True)})
        ready[bundle.name] = {**hit, **new}
        fresh[bundle.encoding_key] = new
    return ready, fresh


def add_encoded(registry: Registry, items: list[Item], ready: Ready) -> dict[str, list[str]]:
    """Add the vectors `encode` prepared; runs on the event loop with no await between the last
    check and the add, so concurrent ingests of one item cannot add it twice."""
    for bundle in _text_bundles(registry):
        vecs = ready.get(bundle.name, {})
        keep = [i for i, (th, _) in vecs.items() if _stale(bundle, i, th)]
        if keep:
            bundle.remove_items(keep)  # those registered before with another text
            bundle.add_items(keep, np.stack([vecs[i][1] for i in keep]))
            bundle.online.update({i: vecs[i][0] for i in keep})
    return {it["item_id"]: [b.name for b in registry.bundles.values() if it["item_id"] in b.index_of] for it in items}


async def ingest(registry: Registry, items: list[Item], shared: ItemRegistry) -> dict[str, list[str]]:
    """Add items to every text-capable bundle of `registry` that lacks them (cached vectors first).

    Returns item id -> names of the bundles that hold it afterwards."""
    items = list({it["item_id"]: it for it in items}.values())  # one item once (the last copy wins)
    ready, fresh = await encode(registry, items, shared)
    held = add_encoded(registry, items, ready)
    for key, entries in fresh.items():
        try:
            await shared.save_vectors(key, entries)
        except StoreUnavailable as exc:
            log.warning("cannot share item vectors: %s", exc)
    return held


def remove(registry: Registry, ids: list[str]) -> list[str]:
    """Stop serving registered items in every bundle; returns the bundles that held any."""
    return [b.name for b in _text_bundles(registry) if b.remove_items(ids)]


async def catch_up(items: ItemRegistry, registry: Registry) -> int:
    """Make `registry` serve exactly the registered items: add the missing ones, remove those
    deleted meanwhile. Returns how many exist. A registry outage is logged, not raised: the
    bundles serve their catalogue meanwhile, and the subscriber catches up when it reconnects."""
    try:
        everything = await items.all()
    except StoreUnavailable as exc:
        log.warning("cannot read registered items: %s", exc)
        return 0
    known = {it["item_id"] for it in everything}
    for bundle in _text_bundles(registry):
        bundle.remove_items([i for i in bundle.online if i not in known])
    if everything:
        await ingest(registry, everything, items)
    return len(everything)


async def swap_in(items: ItemRegistry, registry: Registry, install: Callable[[Registry], None]) -> None:
    """Bring a freshly loaded registry up to date, install it, then add what was announced meanwhile."""
    await catch_up(items, registry)
    install(registry)
    await catch_up(items, registry)
