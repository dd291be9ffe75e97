"""The API's processes: N uvicorn workers on one port, each with its own accept queue.

With uvicorn's own `--workers`, every process accepts from one shared listening socket, and the
process that wakes first takes every connection waiting: a burst of keep-alive connections (a
load balancer's pool, a load generator) can all land on one worker while the others idle, and stay
there. Measured on a 2-core machine with 16 connections (docs/user-state.md): one worker at 100 %
and the other idle in two windows out of three. Linux's SO_REUSEPORT gives each worker a socket
of its own on the same port, and the kernel spreads new connections over them by a hash of the
addresses, so the split no longer depends on which process woke first.

The parent binds every socket before any worker starts (a port in use fails at once, with a plain
message) and keeps them open, so a worker that dies is replaced on the same socket and the
connections that arrived meanwhile wait in its queue instead of being refused. SIGINT/SIGTERM stop
the workers (each drains its requests, up to the graceful timeout) and then the parent.

    python -m app.runtime.server --host 0.0.0.0 --port 8000 --workers 4
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from uvicorn.config import STARTUP_FAILURE  # a worker's exit code when it failed before serving

log = logging.getLogger("seqrec.server")

APP = "app.main:create_app"
RESTART_PAUSE_S = 1.0  # least time between two starts of the same worker slot: a crash loop stays cheap
EARLY_EXIT_S = 30.0  # a worker that exits this soon after its start, QUICK_EXITS times in a row, is broken
QUICK_EXITS = 3
# Why this process's start-up failed (a bundle or experiment refused), printed as the last line
# instead of uvicorn's generic "Application startup failed. Exiting."
_startup_failure: list[str] = []


def record_startup_failure(reason: str) -> None:
    """Called by the lifespan before it re-raises a start-up refusal."""
    _startup_failure.append(reason)


def _recorded() -> str | None:
    """The recorded reason. Read through the package module: under `python -m app.runtime.server` this
    file also runs as __main__, a second module object with its own (empty) list."""
    from app.runtime import server

    return server._startup_failure[-1] if server._startup_failure else None


def _say_why(reason: str) -> None:
    print(f"seqrec: cannot start: {reason}", file=sys.stderr, flush=True)


def reuse_port_available() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_sockets(host: str, port: int, n: int, backlog: int = 2048) -> list[socket.socket]:
    """`n` listening sockets on one address, SO_REUSEPORT on each. A plain bind first: if anything
    listens there already (another server, even one that also sets SO_REUSEPORT), this fails with
    EADDRINUSE instead of silently sharing its traffic. Port 0 picks one free port for all."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    finally:
        probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(_family(host), socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(backlog)
            s.set_inheritable(True)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _server(options: dict[str, Any]) -> Any:
    """A uvicorn server of the app that, once its start-up (the lifespan: bundles loaded) is done,
    moves the process's long-lived heap out of the garbage collector's view (app/runtime/heap.py)."""
    import uvicorn

    from app.runtime import heap

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            heap.settle()

    return Server(uvicorn.Config(APP, factory=True, **options))


def _run(server: Any, sockets: list[socket.socket] | None = None) -> bool:
    """Run a uvicorn server to its end; False when its start-up failed (uvicorn exits then)."""
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        return False
    return bool(server.started)


def _worker(options: dict[str, Any], sock: socket.socket, reasons: Any) -> None:
    """One worker process: a uvicorn server on the socket it was given; a start-up refusal's reason
    goes to the supervisor, which prints it last."""
    if not _run(_server(options), [sock]):
        reason = _recorded()
        if reason is not None:
            reasons.put(reason)
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    """Starts one worker per socket, replaces a worker that dies, stops them all on a signal."""

    def __init__(self, socks: list[socket.socket], options: dict[str, Any], graceful_s: float) -> None:
        self.socks = socks
        self.options = options
        self.graceful_s = graceful_s
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, as uvicorn does
        self.procs: list[Any] = [None] * len(socks)
        self.started: list[float] = [0.0] * len(socks)
        self.quick_exits: list[int] = [0] * len(socks)
        self.stop = threading.Event()
        self.exit_code = 0
        self.reasons = self.ctx.SimpleQueue()

    def _start(self, i: int) -> None:
        p = self.ctx.Process(
            target=_worker, args=(self.options, self.socks[i], self.reasons), name=f"seqrec-worker-{i}"
        )
        p.start()
        self.procs[i], self.started[i] = p, time.monotonic()
        log.info("worker %d started (pid %s)", i, p.pid)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        for i in range(len(self.socks)):
            self._start(i)
        while not self.stop.wait(0.25):
            for i, p in enumerate(self.procs):
                if p.is_alive():
                    continue
                early = time.monotonic() - self.started[i] < EARLY_EXIT_S
                self.quick_exits[i] = self.quick_exits[i] + 1 if early else 0
                if p.exitcode == STARTUP_FAILURE or self.quick_exits[i] >= QUICK_EXITS:
                    # It would fail the same way on every restart: a bad bundle, settings or import.
                    log.error("worker %d could not start or keeps exiting (see its log above); stopping", i)
                    self.exit_code = STARTUP_FAILURE
                    self.stop.set()
                    break
                log.warning("worker %d (pid %s) exited with %s; starting a new one", i, p.pid, p.exitcode)
                time.sleep(max(0.0, self.started[i] + RESTART_PAUSE_S - time.monotonic()))
                self._start(i)
        self._stop_all()
        if self.exit_code == STARTUP_FAILURE and not self.reasons.empty():
            _say_why(self.reasons.get())
        return self.exit_code

    def _stop_all(self) -> None:
        for p in self.procs:
            if p is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)  # uvicorn: stop accepting, drain, run the lifespan's end
        # The parent's copies too: once each worker has closed its own, the port refuses new
        # connections instead of queueing them where nobody will accept them.
        for s in self.socks:
            s.close()
        deadline = time.monotonic() + self.graceful_s + 5
        for p in self.procs:
            if p is None:
                continue
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()


def serve(
    host: str,
    port: int,
    workers: int = 1,
    *,
    reuse_port: bool | None = None,
    graceful_s: float | None = None,
    log_level: str = "warning",
) -> int:
    """Run the API until a signal; returns the exit code. One worker, or no SO_REUSEPORT, or
    `reuse_port` off (default: SEQREC_REUSE_PORT): uvicorn's own server and supervisor."""
    import uvicorn

    if reuse_port is None:  # not told by a caller that has validated the settings: validate them here
        from pydantic import ValidationError

        from app.settings import Settings

        try:
            reuse_port = Settings().reuse_port
        except ValidationError as exc:  # once, plainly, instead of a traceback from every worker
            print(f"invalid settings: {exc}", file=sys.stderr)
            return 2

    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        # /metrics must add up every worker, not show whichever one answered the scrape.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="seqrec-metrics-")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,  # the app writes its own JSON access log
        "log_level": log_level,
        "timeout_graceful_shutdown": graceful_s,
    }
    if workers <= 1:
        if not _run(_server(options)):
            reason = _recorded()
            if reason is not None:
                _say_why(reason)
            return STARTUP_FAILURE
        return 0
    if not reuse_port or not reuse_port_available():
        uvicorn.run(APP, factory=True, workers=workers, **options)  # (its workers' heaps are not frozen)
        return 0
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        socks = bind_sockets(host, port, workers)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", host, port, exc.strerror or exc)
        return 1
    try:
        return Supervisor(socks, options, graceful_s or 0.0).run()
    finally:
        for s in socks:
            s.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m app.runtime.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind")
    ap.add_argument("--port", type=int, default=8000, help="TCP port")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: SEQREC_WORKERS)")
    ap.add_argument(
        "--graceful-s",
        type=float,
        default=None,
        help="longest drain of in-flight requests on SIGTERM (SEQREC_GRACEFUL_S)",
    )
    ap.add_argument("--log-level", default=None, help="uvicorn's log level (default: SEQREC_LOG_LEVEL)")
    a = ap.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        ap.error("--workers must be at least 1")
    from pydantic import ValidationError

    from app.settings import Settings

    try:  # the defaults are the settings' (one place): flags override them
        settings = Settings()
    except ValidationError as exc:  # once, plainly, instead of a traceback from every worker
        print(f"invalid settings: {exc}", file=sys.stderr)
        sys.exit(2)
    workers = a.workers if a.workers is not None else settings.workers
    graceful = a.graceful_s if a.graceful_s is not None else settings.graceful
    log_level = a.log_level or settings.log_level
    sys.exit(serve(a.host, a.port, workers, reuse_port=settings.reuse_port, graceful_s=graceful, log_level=log_level))


if __name__ == "__main__":
    main()
