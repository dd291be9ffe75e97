"""The follower: each process (uvicorn worker or replica on the same Redis and key prefix) runs
`follow` for its whole life: it heartbeats, adds announced items, removes deleted ones, and applies
every newer served configuration (POST /admin/reload in any process) with the one
`install_configuration` (app/fleet/config.py), acknowledging each generation."""

from __future__ import annotations

import asyncio
import logging

from app.bundles.bundle import BundleError
from app.fleet.config import install_configuration, prepare_configuration
from app.serving.catalogue import catch_up, ingest, remove
from app.serving.experiment import ExperimentError
from app.state import AppState
from app.stores.base import StoreUnavailable
from app.stores.items import Announcement, ItemRegistry

log = logging.getLogger("seqrec.app")
HEARTBEAT_S = 2.0
RETRY_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # waits before applying an announcement again, the store being unavailable


async def apply_config(state: AppState, generation: int | None) -> None:
    """Apply the stored configuration if it is newer than what this process serves."""
    items = state.items
    if generation is not None and generation <= items.generation:
        return  # this process published it, or applied it already
    async with state.reload_lock:
        stored = await items.stored_config()
        if stored is None or stored[0] <= items.generation:
            return
        gen, spec = stored
        try:
            reg, experiment = await prepare_configuration(state, spec, spec.get("experiment"))
        except (BundleError, ExperimentError) as exc:
            items.generation = gen  # not retried until a newer one comes
            state.metrics.reloads.labels("rejected").inc()
            log.warning("configuration %d refused here, previous bundles keep serving: %s", gen, exc)
            await items.ack(gen, f"rejected: {exc}"[:300])
            return
        await install_configuration(state, reg, experiment, gen, spec)
    state.metrics.reloads.labels("ok").inc()
    log.info("configuration %d applied: %s (default %s)", gen, ", ".join(reg.bundles), reg.default)
    await items.ack(gen, "ok")


async def _heartbeat(items: ItemRegistry) -> None:
    while True:
        try:
            await items.heartbeat()
        except StoreUnavailable as exc:
            log.debug("heartbeat: %s", exc)
        await asyncio.sleep(HEARTBEAT_S)


async def apply(state: AppState, ann: Announcement) -> None:
    """One announcement: each step is idempotent, so a failed one may be applied again whole."""
    if ann.resync:
        await apply_config(state, None)
        await catch_up(state.items, state.registry)
    if ann.config is not None:
        await apply_config(state, ann.config)
    if ann.items:
        await ingest(state.registry, ann.items, state.items)
    if ann.deleted:
        remove(state.registry, ann.deleted)


async def follow(state: AppState) -> None:
    """Runs for the life of the process (cancelled by the lifespan on shutdown)."""
    beat = asyncio.create_task(_heartbeat(state.items))
    try:
        async for ann in state.items.announcements():
            for wait in (*RETRY_S, None):
                try:
                    await apply(state, ann)
                    break
                except StoreUnavailable as exc:
                    # Redis slow or away for a moment (e.g. its connect timeout on a busy start):
                    # the same announcement again shortly; past the last try, the next
                    # (re)subscription's resync catches up.
                    if wait is None:
                        log.warning("announcement not applied, the store is unavailable: %s", exc)
                        break
                    log.warning("announcement not applied yet (%s); again in %.2g s", exc, wait)
                    await asyncio.sleep(wait)
                except Exception:  # one bad announcement must not stop the subscription
                    log.exception("cannot apply an announcement")
                    break
    finally:
        beat.cancel()
