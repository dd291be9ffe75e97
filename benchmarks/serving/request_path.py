"""What the request path costs besides the model: the ASGI app called in-process, no HTTP server.

    python -m benchmarks.serving.request_path --bundle BUNDLE --out benchmarks/results/serving/request_path.json

Each variant is the real app (create_app) with one part removed: the access log, the Observe
middleware (latency histogram + access log), every middleware, and for /recommend the user
cache on or off (in-process store, one user with a 200-event history). Every variant runs in
the same process, interleaved over `--rounds` rounds; reported is the median CPU time per
request (process_time) and each variant's ratio to the full stack. uvicorn's HTTP parsing is
not included (see benchmarks/serving/serve_load.py for the served numbers).

    python -m benchmarks.serving.request_path --bundle B --served main=/path/to/other/tree --served branch=.

`--served` instead starts one uvicorn server per source tree (same Python, access log on, in-process
store) and sends keep-alive requests one at a time; reported is the server process's CPU time
(user + system from /proc) per request, the trees interleaved over the rounds so that a ratio
between them is measured under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.machine import machine_info  # noqa: E402


def _scope(path: str, query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def _call(app: Any, scope: dict[str, Any]) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]

    await app(scope, receive, send)
    return status


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (fields 14 and 15 of /proc/PID/stat, in clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(trees: list[str], bundle: Path, n: int, rounds: int) -> dict[str, Any]:
    from tests.support.procs import free_port, port_open, stop_process, wait_for

    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for spec in trees:
            name, _, tree = spec.partition("=")
            port = free_port()
            env = {
                **os.environ,
                "PYTHONPATH": str(Path(tree).resolve()),
                "SEQREC_BUNDLES": str(bundle.resolve()),
                "SEQREC_API_KEY": "k",
                "SEQREC_ACCESS_LOG": "true",
            }
            cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--log-level", "warning"]
            proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers[name] = (proc, port)
        for _proc, port in servers.values():
            wait_for(lambda p=port: port_open(p), 90, f"server on {port}", interval=0.2)
        items = json.loads((bundle / "item_ids.json").read_text())[:200]
        events = [{"user_id": "bench", "item_id": i, "timestamp": 1000 + k} for k, i in enumerate(items)]
        body = json.dumps({"events": events})
        conns: dict[str, http.client.HTTPConnection] = {}
        for name, (_proc, port) in servers.items():
            conn = http.client.HTTPConnection("127.0.0.1", port)
            for _ in range(600):  # the port opens before the lifespan has loaded the bundle
                try:
                    conn.request("GET", "/healthz")
                    conn.getresponse().read()
                    break
                except (ConnectionError, http.client.HTTPException):
                    conn.close()
                time.sleep(0.1)
            conn.request("POST", "/events", body, {"X-API-Key": "k", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            conns[name] = conn
        routes = {"healthz": "/healthz", "recommend": "/recommend/bench?k=10"}
        cpu: dict[str, dict[str, list[float]]] = {r: {t: [] for t in servers} for r in routes}
        for _ in range(rounds):
            for route, path in routes.items():
                for name, (proc, _port) in servers.items():
                    conn = conns[name]
                    for _ in range(100):
                        conn.request("GET", path)
                        conn.getresponse().read()
                    c0 = _proc_cpu_s(proc.pid)
                    for _ in range(n):
                        conn.request("GET", path)
                        resp = conn.getresponse()
                        resp.read()
                        assert resp.status == 200
                    cpu[route][name].append((_proc_cpu_s(proc.pid) - c0) / n)
        first = next(iter(servers))
        out: dict[str, Any] = {}
        for route in routes:
            med = {t: float(np.median(x)) for t, x in cpu[route].items()}
            out[route] = {
                t: {"server_cpu_us_per_request": round(m * 1e6, 1), f"over_{first}": round(m / med[first], 3)}
                for t, m in med.items()
            }
        return out
    finally:
        for proc, _port in servers.values():
            stop_process(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000, help="requests per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serving/request_path.json"))
    ap.add_argument("--served", action="append", default=[], metavar="NAME=TREE", help="one server per tree")
    args = ap.parse_args()
    if args.served:
        result = {
            "command": " ".join(["python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "machine": machine_info(),
            "cpu_affinity": sorted(os.sched_getaffinity(0)),
            "note": "uvicorn servers (access log on, in-process store), one keep-alive client, requests one at a "
            "time; server CPU (user+system, /proc) per request, median of rounds, trees interleaved",
            **served(args.served, args.bundle, args.n, args.rounds),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    def build(access_log: bool = True, observe: bool = True, middleware: bool = True, cache: bool = True) -> Any:
        app = create_app(Settings(bundles=[args.bundle], access_log=access_log, user_cache=cache, api_key="k"))
        if not middleware:
            app.user_middleware.clear()
        elif not observe:
            app.user_middleware[:] = [m for m in app.user_middleware if m.cls.__name__ != "Observe"]
        return app

    variants = {
        "full": {},
        "no_access_log": {"access_log": False},
        "no_observe_middleware": {"observe": False},
        "no_middleware": {"middleware": False},
        "full_cache_off": {"cache": False},
    }
    clients = {name: TestClient(build(**kw)) for name, kw in variants.items()}
    for c in clients.values():
        c.__enter__()
    items = json.loads((args.bundle / "item_ids.json").read_text())[:200]
    events = [{"user_id": "bench", "item_id": i, "timestamp": 1000 + n} for n, i in enumerate(items)]
    for c in clients.values():
        assert c.post("/events", json={"events": events}, headers={"X-API-Key": "k"}).status_code == 200
    routes = {"healthz": _scope("/healthz"), "recommend": _scope("/recommend/bench", b"k=10")}
    cpu: dict[str, dict[str, list[float]]] = {r: {v: [] for v in variants} for r in routes}

    async def loop(app: Any, scope: dict[str, Any], n: int) -> float:
        for _ in range(50):
            assert await _call(app, scope) == 200
        t0 = time.process_time()
        for _ in range(n):
            await _call(app, scope)
        return (time.process_time() - t0) / n

    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 - the access log's lines go nowhere
    try:
        for _ in range(args.rounds):
            for route, scope in routes.items():
                for name, c in clients.items():
                    cpu[route][name].append(c.portal.call(loop, c.app, scope, args.n))
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    hits = [ln for ln in clients["full"].get("/metrics").text.splitlines() if ln.startswith("seqrec_user_cache_total{")]
    for c in clients.values():
        c.__exit__(None, None, None)
    result: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "note": "in-process ASGI calls (no uvicorn, no socket); median of rounds; access log written to /dev/null",
        "user_cache_counters_full": hits,
    }
    for route in routes:
        med = {v: float(np.median(x)) for v, x in cpu[route].items()}
        result[route] = {
            v: {"cpu_us_per_request": round(m * 1e6, 1), "over_full": round(m / med["full"], 3)} for v, m in med.items()
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({r: result[r] for r in routes}, indent=2))


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
