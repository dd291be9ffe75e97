"""Operations: liveness, readiness, Prometheus metrics, bundle reload without restart."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.api.deps import ApiKey, State
from app.api.errors import unavailable
from app.api.schemas import BundleOut, ErrorOut, Health, Ready, ReloadIn, ReloadOut, ReloadReach
from app.bundles.bundle import BundleError
from app.bundles.registry import Registry
from app.fleet.config import install_configuration, prepare_configuration, reach, spec_of
from app.serving.catalogue import catch_up
from app.serving.experiment import ExperimentError
from app.stores.base import StoreUnavailable

router = APIRouter(tags=["operations"])
log = logging.getLogger("seqrec.app")


def _bundles(reg: Registry) -> list[BundleOut]:
    return [BundleOut(**asdict(b.info)) for b in reg.bundles.values()]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "Not ready"}})
async def readyz(state: State, response: Response) -> Ready:
    """Readiness: a bundle is loaded and the store answers a ping."""
    store_ok = await state.store.ping()
    ready = store_ok and bool(state.registry.bundles)
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Ready(
        ready=ready,
        store=state.store.kind,
        store_ok=store_ok,
        default_model=state.registry.default,
        bundles=_bundles(state.registry),
    )


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(state: State) -> Response:
    """Prometheus exposition format (all worker processes together when PROMETHEUS_MULTIPROC_DIR is set)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several uvicorn workers: each writes its samples to the shared directory; aggregate them all.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it untyped
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/admin/reload",
    response_model=ReloadOut,
    dependencies=[ApiKey],
    responses={
        401: {"model": ErrorOut, "description": "API key required"},
        422: {"model": ErrorOut, "description": "Bundle rejected; the previous bundles keep serving"},
        503: {"model": ErrorOut, "description": "Configuration store unreachable: nothing changed, retry"},
    },
)
async def reload(state: State, body: ReloadIn | None = None) -> ReloadOut:
    """Load bundles (validated: manifest, checksums, a test inference), swap them in atomically, and
    make every API process serve them: with Redis the configuration is stored and announced to all
    workers and replicas on the same Redis and key prefix (and loaded by processes started later);
    the answer says which processes applied it within SEQREC_RELOAD_ACK_TIMEOUT_S."""
    body = body or ReloadIn()
    items = state.items
    current = items.spec or spec_of([str(p) for p in state.settings.bundles], state.settings.default_model)
    spec = spec_of(
        body.bundles or current["bundles"],
        body.default_model if body.default_model is not None else current.get("default_model"),
    )
    # The A/B split travels with the configuration, so every process applies it too.
    running = state.experiment.spec if state.experiment is not None else None
    spec["experiment"] = body.experiment if body.experiment is not None else current.get("experiment", running)
    async with state.reload_lock:
        try:
            # Off the event loop: hashing and index building take a while, requests keep flowing.
            reg, experiment = await prepare_configuration(
                state, spec, spec["experiment"] or "", running=body.experiment is None
            )
        except BundleError as exc:
            state.metrics.reloads.labels("rejected").inc()
            log.warning("bundle reload rejected: %s", exc)
            raise HTTPException(422, f"bundle rejected, previous bundles keep serving: {exc}") from exc
        except ExperimentError as exc:
            state.metrics.reloads.labels("rejected").inc()
            raise HTTPException(422, f"experiment rejected, the previous configuration keeps serving: {exc}") from exc
        try:
            # Registered items reach the new bundles (their cached vectors, encoding only what is
            # missing) before the configuration is announced, so the other processes find them cached.
            await catch_up(items, reg)
            generation = await items.publish_config(spec)
        except StoreUnavailable as exc:
            raise unavailable("configuration store", exc, "nothing changed") from exc
        await install_configuration(state, reg, experiment, generation, spec)
    await items.ack(generation, "ok")
    state.metrics.reloads.labels("ok").inc()
    log.info("bundles reloaded (configuration %d): %s", generation, ", ".join(reg.bundles))
    reached = await reach(items, generation, state.settings.reload_ack_timeout)
    return ReloadOut(
        reloaded=True,
        default_model=reg.default,
        bundles=_bundles(reg),
        reached=ReloadReach(**asdict(reached)),
        experiment=experiment.spec if experiment is not None else None,
    )
