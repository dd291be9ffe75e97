"""Keeping every API process alike: the follower task, configuration generations, reload reach.

Each process (uvicorn worker or replica on the same Redis and key prefix) runs `follow` for its
whole life: it heartbeats, adds announced items, removes deleted ones, and applies every newer
served configuration (POST /admin/reload in any process), acknowledging each generation. A
reload answers with what it reached (`reach`): the live processes and which of them applied it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.bundle import BundleError
from app.experiment import ExperimentError
from app.items import ItemRegistry, catch_up, ingest, remove, swap_in
from app.online import next_experiment
from app.registry import Registry
from app.schemas import ReloadReach
from app.state import AppState
from app.stores import StoreUnavailable

log = logging.getLogger("seqrec.app")
HEARTBEAT_S = 2.0


def spec_of(paths: list[str], default: str | None) -> dict[str, Any]:
    return {"bundles": [str(p) for p in paths], "default_model": default}


async def load_spec(spec: dict[str, Any], ann_threshold: int) -> Registry:
    """Load and validate the bundles of a configuration off the event loop (BundleError if bad)."""
    return await asyncio.to_thread(Registry.load, spec["bundles"], spec.get("default_model"), ann_threshold)


async def initial_registry(items: ItemRegistry, paths: list[str], default: str | None, ann: int) -> Registry:
    """At start: the stored configuration when there is one (a reload outlives restarts and
    reaches processes started later), else the settings. A stored configuration that no longer
    loads here is logged and the settings serve instead."""
    spec = spec_of(paths, default)
    try:
        stored = await items.stored_config()
    except StoreUnavailable as exc:
        log.warning("cannot read the stored configuration, serving the settings' bundles: %s", exc)
        stored = None
    if stored is not None:
        gen, want = stored
        items.generation = gen
        try:
            reg = await load_spec(want, ann)
        except BundleError as exc:
            log.warning("stored configuration %d does not load here, serving the settings' bundles: %s", gen, exc)
            await items.ack(gen, f"rejected: {exc}"[:300])
        else:
            items.spec = want
            await items.ack(gen, "ok")
            return reg
    items.spec = spec
    return await load_spec(spec, ann)


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
            reg = await load_spec(spec, state.settings.ann_threshold)
            experiment = next_experiment(state.live, spec.get("experiment"), reg, state.settings.experiment_salt)
        except (BundleError, ExperimentError) as exc:
            items.generation = gen  # not retried until a newer one comes
            state.metrics.reloads.labels("rejected").inc()
            log.warning("configuration %d refused here, previous bundles keep serving: %s", gen, exc)
            await items.ack(gen, f"rejected: {exc}"[:300])
            return
        await swap_in(items, reg, state.install)
        items.generation, items.spec = gen, spec
        if state.live is not None:
            state.live.experiment = experiment
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


async def follow(state: AppState) -> None:
    """Runs for the life of the process (cancelled by the lifespan on shutdown)."""
    beat = asyncio.create_task(_heartbeat(state.items))
    try:
        async for ann in state.items.announcements():
            try:
                if ann.resync:
                    await apply_config(state, None)
                    await catch_up(state.items, state.registry)
                if ann.config is not None:
                    await apply_config(state, ann.config)
                if ann.items:
                    await ingest(state.registry, ann.items, state.items)
                if ann.deleted:
                    remove(state.registry, ann.deleted)
            except Exception:  # one bad announcement must not stop the subscription
                log.exception("cannot apply an announcement")
    finally:
        beat.cancel()


async def reach(items: ItemRegistry, generation: int, timeout: float) -> ReloadReach:
    """Wait (at most `timeout`) until every live process acknowledged `generation`; say who did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    known = True
    while True:
        try:
            live, acks = await items.reach(generation)
        except StoreUnavailable as exc:
            # Applied here and announced; who else applied it cannot be told now.
            log.warning("cannot read reload acknowledgements: %s", exc)
            live, acks, known = [items.worker], {items.worker: "ok"}, False
        pending = sorted(w for w in live if w not in acks)
        if not known or not pending or loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    return ReloadReach(
        scope="process" if items.kind == "memory" else "redis",
        generation=generation,
        live=len(set(live) | set(acks)),
        applied=sorted(w for w, o in acks.items() if o == "ok"),
        rejected={w: o for w, o in acks.items() if o != "ok"},
        pending=pending,
        complete=known and not pending and all(o == "ok" for o in acks.values()),
    )
