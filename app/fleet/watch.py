"""Pick up a new bundle without a restart: poll the configured bundle paths.

A deployment points SEQREC_BUNDLES at a symlink (e.g. /bundles/sasrec -> releases/sasrec-...)
that the training job swaps atomically after `seqrec export` has renamed a complete bundle
into place. Every process polls the symlink target and the manifest's mtime; on a change it
loads and validates the new bundles off the event loop (manifest, checksums, a test
inference) and swaps the whole registry. A bundle that fails validation is refused (logged,
counted) and the bundles already loaded keep serving; it is retried only when it changes again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from app.bundles.bundle import BundleError
from app.fleet.config import install_configuration, prepare_configuration, spec_of
from app.serving.experiment import ExperimentError
from app.state import AppState

log = logging.getLogger("seqrec.app")

Signature = tuple[tuple[str, int | None, int | None], ...]


def signature(paths: Sequence[Path]) -> Signature:
    """What identifies the bundles on disk now: resolved target, manifest and directory mtimes."""
    out = []
    for p in paths:
        real = os.path.realpath(p)
        try:
            manifest = os.stat(os.path.join(real, "manifest.json")).st_mtime_ns
        except OSError:
            manifest = None
        try:
            folder = os.stat(real).st_mtime_ns
        except OSError:
            folder = None
        out.append((real, manifest, folder))
    return tuple(out)


async def watch_bundles(state: AppState, interval_s: float) -> None:
    """Runs for the life of the process (cancelled by the lifespan on shutdown)."""

    def served() -> tuple[list[Path], str | None]:
        # The configuration served now (a reload may have changed it), not the settings'.
        spec = state.items.spec
        if spec.get("bundles"):
            return [Path(p) for p in spec["bundles"]], spec.get("default_model")
        return list(state.settings.bundles), state.settings.default_model

    paths, _ = served()
    last = await asyncio.to_thread(signature, paths)
    while True:
        await asyncio.sleep(interval_s)
        try:
            now_paths, default = served()
            if now_paths != paths:  # a reload changed the paths: follow those, it loaded them already
                paths = now_paths
                last = await asyncio.to_thread(signature, paths)
                continue
            sig = await asyncio.to_thread(signature, paths)
            if sig == last:
                continue
            last = sig
            async with state.reload_lock:
                # The same paths and default; the running experiment must still find its bundles.
                spec = spec_of([str(p) for p in paths], default)
                reg, experiment = await prepare_configuration(state, spec, None)
                # Registered items are re-encoded by the new bundles before they serve.
                await install_configuration(state, reg, experiment)
            state.metrics.reloads.labels("ok").inc()
            log.info("new bundles picked up: %s", ", ".join(f"{b.name} {b.version}" for b in reg.bundles.values()))
        except (BundleError, ExperimentError) as exc:
            state.metrics.reloads.labels("rejected").inc()
            log.warning("new bundle refused, previous bundles keep serving: %s", exc)
        except Exception:  # the watcher must never die silently
            log.exception("bundle watcher error")
