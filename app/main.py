"""`create_app(settings)`: the FastAPI application factory with its lifespan.

The lifespan loads every configured bundle (manifest + checksums + a test inference) and
opens the one store connection pool; requests reach both through typed dependencies.
Run with `seqrec serve` or `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager

# One BLAS thread per worker process: parallelism comes from workers, not oversubscription.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exception_handlers import http_exception_handler  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.routing import Match, Route  # noqa: E402

from app.api import errors  # noqa: E402
from app.api.errors import validation_answer  # noqa
from app.api.middleware import BodyLimit, EncodedSlash, FastRead, FastWrite, Liveness, Observe  # noqa: E402
from app.api.openapi import document_validation_errors  # noqa: E402
from app.api.routes import catalog as catalog_routes  # noqa: E402
from app.api.routes import events, items, ops, recommend, similar, stats, ui  # noqa: E402
from app.api.schemas import Health  # noqa
from app.bundles.bundle import BundleError  # noqa
from app.bundles.registry import Registry  # noqa: E402
from app.fleet.config import initial_registry  # noqa: E402
from app.fleet.follow import follow  # noqa: E402
from app.fleet.watch import watch_bundles  # noqa: E402
from app.runtime.logging import configure_logging  # noqa: E402
from app.runtime.metrics import Metrics  # noqa: E402
from app.runtime.server import record_startup_failure  # noqa: E402
from app.serving.catalog import Catalog, Limits, RulesError  # noqa: E402
from app.serving.catalogue import catch_up  # noqa: E402
from app.serving.experiment import Experiment, ExperimentError, load_experiment  # noqa: E402
from app.serving.online import make_live  # noqa: E402
from app.serving.ratelimit import TokenBuckets  # noqa: E402
from app.serving.usercache import UserCache  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.state import AppState  # noqa: E402
from app.stores.base import StoreUnavailable  # noqa: E402
from app.stores.open import open_catalog, open_items, open_store  # noqa: E402

log = logging.getLogger("seqrec.app")


async def bounded(aws: Sequence[Awaitable[object]], what: str, timeout: float) -> None:
    """Await `aws` for at most `timeout`; past that, log where each straggler is stuck and go on.

    asyncio.wait, not wait_for: wait_for waits again for a cancelled awaitable to finish, which
    is exactly what hangs when a library swallows the cancellation."""
    futs = [asyncio.ensure_future(aw) for aw in aws]
    done, pending = await asyncio.wait(futs, timeout=timeout)
    for fut in done:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("shutdown: the %s failed: %r", what, fut.exception())
    for fut in pending:
        where = io.StringIO()
        if isinstance(fut, asyncio.Task):
            fut.print_stack(file=where)
        fut.cancel()
        log.warning("shutdown: the %s did not finish within %.1f s\n%s", what, timeout, where.getvalue())


def start_experiment(spec: str | None, settings: Settings, registry: Registry) -> Experiment | None:
    """The experiment to start with (None: none); ExperimentError, logged, on a bad one."""
    try:
        split = load_experiment(spec, settings.experiment_salt, registry)
    except ExperimentError as exc:
        log.error("SEQREC_EXPERIMENT refused: %s", exc)
        raise
    if split is not None:
        log.info("experiment: %s (salt %r)", split.spec, split.salt)
        if not settings.online_tracking:
            log.warning("SEQREC_ONLINE_TRACKING is off: the experiment splits traffic but nothing is measured")
    return split


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            store = open_store(settings)
            limiter = (
                TokenBuckets(settings.write_rate_per_s, settings.write_burst) if settings.write_rate_per_s else None
            )
            item_reg = open_items(settings, store)
            limits = Limits(settings.filter_overfetch_max, settings.filter_exact_max)
            catalog = Catalog(
                open_catalog(settings, store), settings.rules, settings.catalog_poll_s, metrics.registry, limits
            )
            # The stored configuration (the last POST /admin/reload of any process) wins over the settings.
            registry = await initial_registry(
                item_reg, [str(p) for p in settings.bundles], settings.default_model, settings.ann_threshold
            )
            state = AppState(
                settings=settings,
                registry=registry,
                store=store,
                metrics=metrics,
                write_limiter=limiter,
                items=item_reg,
                catalog=catalog,
            )
            # The A/B split (a reload's experiment, stored with its configuration, wins over the
            # settings' as its bundles do); raises on a bad one.
            spec = item_reg.spec.get("experiment", settings.experiment)
            state.experiment = start_experiment(spec, settings, registry)
            state.live = make_live(settings, store, metrics, bundles=lambda: state.registry.bundles)
        except (BundleError, ExperimentError, RulesError) as exc:
            record_startup_failure(f"experiment: {exc}" if isinstance(exc, ExperimentError) else str(exc))
            raise
        ttl = min(settings.user_cache_ttl_s, settings.history_ttl_s)
        state.user_cache = UserCache(store, settings.user_cache, ttl, metrics.registry, settings.user_state)
        # Items registered before this process started (by any process) are served from the start;
        # the follower then applies everything announced later.
        await catch_up(item_reg, registry)
        follower = asyncio.create_task(follow(state))
        # The catalogue (attributes, availability) before the first request; then followed.
        try:
            await catalog.sync()
        except StoreUnavailable as exc:
            log.warning("catalogue unreadable at start, filters wait for it: %s", exc)
        catalog.attach(list(registry.bundles.values()))
        shop = asyncio.create_task(catalog.follow()) if catalog.store.kind != "memory" else None
        app.state.seqrec = state
        log.info("serving %s (default %s), store %s", ", ".join(registry.bundles), registry.default, store.kind)
        watcher = asyncio.create_task(watch_bundles(state, settings.bundle_poll_s)) if settings.bundle_poll_s else None
        try:
            yield
        finally:
            tasks = [t for t in (follower, watcher, shop) if t is not None]
            for task in tasks:
                task.cancel()
            # Let the subscriber close its connection before the loop goes away, but never wait
            # forever: a hung shutdown outlives the orchestrator's grace period and gets killed.
            await bounded(tasks, "background tasks", settings.shutdown_timeout)
            if state.live is not None:  # the last counters, before the pool they use closes
                await bounded([state.live.close()], "online tracking", settings.shutdown_timeout)
            closing = [item_reg.close(), catalog.store.close(), store.close()]
            await bounded(closing, "connection pools", settings.shutdown_timeout)

    app = FastAPI(
        title="seqrec",
        version="0.1.0",
        summary="Real-time sequential recommendations: events in, next items out.",
        lifespan=lifespan,
        # Off unless asked for: with it on, every request first asks the OpenTelemetry API
        # whether a provider is configured (about 8% of a /healthz request's CPU).
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    # Matched in this order, router by router: the hot paths (reads, probes, writes) first. No two
    # routers share a path, so the order changes only how many routes a request is tried against.
    routers = [recommend.router, ops.router, events.router, items.router, similar.router, stats.router, ui.router]
    routers.append(catalog_routes.router)
    for router in routers:
        app.include_router(router)

    errors.install(app)  # domain errors -> HTTP, in one place

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, body = validation_answer(exc.errors())
        return JSONResponse(body, status_code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; a path served by several
            # routes (GET and DELETE /items/{item_id}) must list every method it takes.
            allowed = set()
            for route in (r for router in routers for r in router.routes):
                if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
                    allowed |= route.methods or set()
            headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
            return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)
        return await http_exception_handler(request, exc)

    document_validation_errors(app)
    health = next(r for r in ops.router.routes if isinstance(r, Route) and r.path == "/healthz")
    if settings.fast_reads:
        read = next(r for r in recommend.router.routes if isinstance(r, Route) and r.path == "/recommend/{user_id}")
        app.add_middleware(FastRead, route=read, prefix=recommend.PREFIX, handler=recommend.plain_answer)
        write = next(r for r in events.router.routes if isinstance(r, Route) and r.path == events.PATH)
        app.add_middleware(FastWrite, route=write, path=events.PATH, handler=events.plain_ingest)
    app.add_middleware(Liveness, route=health, body=Health().model_dump_json().encode())
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout)
    app.add_middleware(EncodedSlash)
    app.add_middleware(Observe, metrics=metrics, log_requests=settings.access_log)
    return app
