"""Keeping every API process alike: one way to install a served configuration.

A configuration is the bundle paths, the default model and the A/B experiment. It is installed by
three callers, all through `install_configuration`: POST /admin/reload (in the process that
receives it, which then stores and announces it), the follower (every other process, on the
announcement: app/fleet/follow.py) and the bundle watcher (new files on disk: app/fleet/watch.py).
Each loads and checks the bundles off the event loop, checks the experiment against them,
brings the registered items up to date, and swaps the new registry in whole.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from app.bundles.bundle import BundleError
from app.bundles.loader import load_registry
from app.bundles.registry import Registry
from app.serving.catalogue import swap_in
from app.serving.experiment import Experiment, next_experiment
from app.state import AppState
from app.stores.base import StoreUnavailable
from app.stores.items import ItemRegistry

log = logging.getLogger("seqrec.app")


@dataclass(frozen=True)
class Reach:
    """Which API processes serve a configuration generation (POST /admin/reload's `reached`)."""

    scope: str  # "process" | "redis"
    generation: int
    live: int
    applied: list[str]
    rejected: dict[str, str]
    pending: list[str]
    complete: bool


def spec_of(paths: list[str], default: str | None) -> dict[str, Any]:
    return {"bundles": [str(p) for p in paths], "default_model": default}


async def load_spec(spec: dict[str, Any], ann_threshold: int) -> Registry:
    """Load and validate the bundles of a configuration off the event loop (BundleError if bad)."""
    return await asyncio.to_thread(load_registry, spec["bundles"], spec.get("default_model"), ann_threshold)


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


async def prepare_configuration(
    state: AppState, spec: dict[str, Any], experiment: str | None, *, running: bool = False
) -> tuple[Registry, Experiment | None]:
    """Load `spec`'s bundles (BundleError) and check `experiment` against them (ExperimentError;
    None: the running one, re-checked). Nothing changes in the process yet."""
    reg = await load_spec(spec, state.settings.ann_threshold)
    split = next_experiment(state.experiment, experiment, reg, state.settings.experiment_salt, running=running)
    return reg, split


async def install_configuration(
    state: AppState,
    reg: Registry,
    experiment: Experiment | None,
    generation: int | None = None,
    spec: dict[str, Any] | None = None,
) -> None:
    """Serve a prepared configuration: registered items reach the new bundles, the registry is
    swapped in whole, then the experiment; `generation`/`spec` record what was applied."""
    await swap_in(state.items, reg, state.install)
    if generation is not None:
        state.items.generation, state.items.spec = generation, spec or {}
    state.experiment = experiment


async def reach(items: ItemRegistry, generation: int, timeout: float) -> Reach:
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
    return Reach(
        scope="process" if items.kind == "memory" else "redis",
        generation=generation,
        live=len(set(live) | set(acks)),
        applied=sorted(w for w, o in acks.items() if o == "ok"),
        rejected={w: o for w, o in acks.items() if o != "ok"},
        pending=pending,
        complete=known and not pending and all(o == "ok" for o in acks.values()),
    )
