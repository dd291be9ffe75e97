"""Fault scenarios against real processes: redis-server (compose config) and uvicorn API servers.

Each scenario is the row of the fault table in docs/deploy.md it proves:
- Redis stopped under load: recommend answers from popularity, flagged; events 503 + Retry-After;
  every request returns promptly (bounded client timeouts: nothing hangs);
- Redis frozen (SIGSTOP): the same, through the short Redis timeouts;
- Redis restarted: the API recovers by itself, no restart;
- graceful Redis restart (SIGTERM) and kill -9 (appendfsync always): no acknowledged event lost,
  and a control run without AOF shows the check does catch loss;
- SIGTERM to an API process: a request in flight completes, then the process exits cleanly;
- corrupt / half-written bundle on reload: refused, the old bundle keeps serving.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import API_KEY, RedisProc, port_open, wait_for

KEY = {"X-API-Key": API_KEY}
CLIENT_TIMEOUT = 5.0  # a request that needs longer than this counts as hanging


def item_ids(bundle: Path) -> list[str]:
    return json.loads((bundle / "item_ids.json").read_text())


def post(base: str, events: list[dict]) -> httpx.Response:
    return httpx.post(f"{base}/events", json={"events": events}, headers=KEY, timeout=CLIENT_TIMEOUT)


def rec(base: str, user: str, **params) -> httpx.Response:
    return httpx.get(f"{base}/recommend/{user}", params={"k": 5, **params}, timeout=CLIENT_TIMEOUT)


def seed_user(base: str, user: str, items: list[str]) -> None:
    evs = [{"user_id": user, "item_id": it, "timestamp": 1_700_000_000 + n} for n, it in enumerate(items)]
    r = post(base, evs)
    assert r.status_code == 200, r.text


def test_redis_stopped_under_load_then_restarted(redis_proc: RedisProc, api_factory, deploy_bundle: Path) -> None:
    api = api_factory([deploy_bundle], redis_proc.url, SEQREC_KEY_PREFIX="fault1:")
    items = item_ids(deploy_bundle)
    seed_user(api.base, "u-load", items[:10])
    assert rec(api.base, "u-load").json()["source"] == "model"

    outcomes: list[tuple[str, int, dict, str | None]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def load(worker: int) -> None:
        n = 0
        with httpx.Client(timeout=CLIENT_TIMEOUT) as c:
            while not stop.is_set():
                n += 1
                try:
                    if n % 5 == 0:
                        ev = {"user_id": f"w{worker}", "item_id": items[n % 50], "event_id": f"{worker}-{n}"}
                        r = c.post(f"{api.base}/events", json={"events": [ev]}, headers=KEY)
                        outcomes.append(("events", r.status_code, r.json(), r.headers.get("retry-after")))
                    else:
                        r = c.get(f"{api.base}/recommend/u-load", params={"k": 5})
                        outcomes.append(("recommend", r.status_code, r.json(), None))
                except BaseException as exc:  # a timeout here is the failure this test looks for
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(outcomes) > 30, 60, "load before the fault")
    redis_proc.kill()
    mark = len(outcomes)
    wait_for(lambda: len(outcomes) > mark + 60, 60, "load during the outage")
    during = outcomes[mark + 5 :]  # skip requests that were already past Redis when it died

    ready = httpx.get(f"{api.base}/readyz", timeout=CLIENT_TIMEOUT)
    assert ready.status_code == 503 and ready.json()["store_ok"] is False

    redis_proc.start()  # same port, same AOF directory
    restarted = len(outcomes)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, f"a request hung or failed at the client: {errors[:3]}"

    recs = [o for o in during if o[0] == "recommend"]
    evs = [o for o in during if o[0] == "events"]
    assert recs and evs
    assert all(code == 200 for _, code, _, _ in recs), "recommend must keep answering"
    odd = [b for _, _, b, _ in recs if b["source"] != "popularity" or b["fallback"] != "store_unavailable"]
    assert not odd, odd[:3]
    assert all(len(b["items"]) == 5 for _, _, b, _ in recs)
    assert all(code == 503 and retry is not None and int(retry) >= 1 for _, code, _, retry in evs)
    assert restarted > mark

    # Recovery without restarting the API: the pool reconnects on the next commands.
    def recovered() -> bool:
        r = rec(api.base, "u-load")
        return r.status_code == 200 and r.json()["source"] == "model"

    wait_for(recovered, 30, "the API to use Redis again", interval=0.2)
    assert rec(api.base, "u-load").json()["history_length"] == 10  # the history survived (AOF)
    assert post(api.base, [{"user_id": "u-after", "item_id": items[0]}]).status_code == 200
    assert httpx.get(f"{api.base}/readyz", timeout=CLIENT_TIMEOUT).status_code == 200
    metrics = httpx.get(f"{api.base}/metrics").text
    assert 'seqrec_recommend_fallback_total{reason="store_unavailable"}' in metrics


def test_frozen_redis_times_out_quickly(redis_proc: RedisProc, api_factory, deploy_bundle: Path) -> None:
    """SIGSTOP: connections stay open but nothing answers; the short Redis timeouts bound every call."""
    api = api_factory([deploy_bundle], redis_proc.url, SEQREC_KEY_PREFIX="fault2:")
    items = item_ids(deploy_bundle)
    seed_user(api.base, "u-frozen", items[:5])
    redis_proc.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):
            r = rec(api.base, "u-frozen")
            assert r.status_code == 200 and r.json()["fallback"] == "store_unavailable"
            r = post(api.base, [{"user_id": "u-frozen", "item_id": items[7]}])
            assert r.status_code == 503 and "retry-after" in r.headers
    finally:
        redis_proc.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: rec(api.base, "u-frozen").json()["source"] == "model", 30, "recovery", interval=0.2)


def write_until(base: str, items: list[str], stop: threading.Event, acked: list[dict], tag: str) -> None:
    """One writer: batches of 5 events for fresh users; keeps every event acknowledged with 200."""
    n = 0
    with httpx.Client(timeout=CLIENT_TIMEOUT) as c:
        while not stop.is_set():
            n += 1
            batch = [
                {"user_id": f"{tag}-u{n}", "item_id": items[(n + j) % len(items)], "event_id": f"e{j}"}
                for j in range(5)
            ]
            try:
                r = c.post(f"{base}/events", json={"events": batch}, headers=KEY)
            except httpx.HTTPError:
                continue  # not acknowledged
            if r.status_code == 200:
                assert r.json()["accepted"] == 5
                acked.extend(batch)
            else:
                assert r.status_code == 503, r.text


@pytest.mark.parametrize("how", ["sigterm", "kill-9", "kill-9-without-aof"])
def test_no_acknowledged_event_lost_across_redis_restart(
    how: str, tmp_path: Path, api_factory, deploy_bundle: Path
) -> None:
    from tests.support.procs import REDIS_CONF

    if how == "kill-9-without-aof":
        # Control: the same check must detect loss when Redis does not persist.
        redis = RedisProc(tmp_path / "redis", conf=REDIS_CONF, extra=["--appendonly", "no", "--save", ""]).start()
    else:
        redis = RedisProc(tmp_path / "redis", conf=REDIS_CONF).start()
    try:
        prefix = f"dur-{how}:"
        api = api_factory([deploy_bundle], redis.url, SEQREC_KEY_PREFIX=prefix)
        items = item_ids(deploy_bundle)
        acked: list[dict] = []
        stop = threading.Event()
        writers = [threading.Thread(target=write_until, args=(api.base, items, stop, acked, f"w{i}")) for i in range(3)]
        for t in writers:
            t.start()
        wait_for(lambda: len(acked) >= 150, 60, "acknowledged writes")
        if how == "sigterm":
            redis.stop()
        else:
            redis.kill()
        n_before = len(acked)
        # Writers hit the outage (503s, not acknowledgements) until the restart; the API has seen it:
        wait_for(lambda: httpx.get(f"{api.base}/readyz", timeout=CLIENT_TIMEOUT).status_code == 503, 30, "outage")
        redis.start()
        wait_for(lambda: len(acked) >= n_before + 50, 60, "writes after the restart")
        stop.set()
        for t in writers:
            t.join(timeout=30)

        client = redis.client()
        pipe = client.pipeline(transaction=False)
        for ev in acked:
            pipe.zscore(f"{prefix}h:{ev['user_id']}", f"{ev['event_id']}\x1f{ev['item_id']}")
        missing = sum(score is None for score in pipe.execute())
        client.close()
        if how == "kill-9-without-aof":
            assert missing >= n_before, "without persistence the events acknowledged before the kill are gone"
        else:
            assert missing == 0, f"{missing} of {len(acked)} acknowledged events lost"
    finally:
        redis.kill()


def test_sigterm_lets_inflight_request_finish(redis_proc: RedisProc, api_factory, deploy_bundle: Path) -> None:
    api = api_factory([deploy_bundle], redis_proc.url, SEQREC_KEY_PREFIX="term:")
    items = item_ids(deploy_bundle)
    body = json.dumps({"events": [{"user_id": "u-term", "item_id": items[3], "event_id": "last"}]}).encode()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=CLIENT_TIMEOUT * 4) as s:
        s.sendall(head + body[:10])  # the request is in flight: headers in, body still arriving
        time.sleep(0.3)
        api.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not port_open(api.port), 20, "the listener to close (no new connections)")
        assert api.proc.poll() is None, "exited before the in-flight request finished"
        s.sendall(body[10:])
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["accepted"] == 1
    # uvicorn re-raises the signal once drained: "terminated by SIGTERM" after a clean shutdown.
    assert api.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in api.log.read_text()
    assert redis_proc.client().zscore("term:h:u-term", f"last\x1f{items[3]}") is not None


def test_bad_bundle_is_refused_and_old_keeps_serving(
    tmp_path: Path, redis_proc: RedisProc, api_factory, deploy_bundles: list[Path]
) -> None:
    good, other = deploy_bundles
    root = tmp_path / "bundles"
    (root / "releases").mkdir(parents=True)
    shutil.copytree(good, root / "releases" / "good")
    (root / "sasrec").symlink_to("releases/good")
    api = api_factory([root / "sasrec"], redis_proc.url, SEQREC_BUNDLE_POLL_S="0.2", SEQREC_KEY_PREFIX="bnd:")

    def serving() -> str:
        return httpx.get(f"{api.base}/readyz", timeout=CLIENT_TIMEOUT).json()["bundles"][0]["name"]

    def rejected() -> float:
        for line in httpx.get(f"{api.base}/metrics").text.splitlines():
            if line.startswith('seqrec_bundle_reloads_total{result="rejected"}'):
                return float(line.split()[-1])
        return 0.0

    def publish(release: str) -> None:
        tmp = root / ".sasrec.next"
        tmp.symlink_to(f"releases/{release}")
        tmp.replace(root / "sasrec")  # atomic, like docker/train-job.sh

    assert serving() == "sasrec-a"
    # Half-written: a copy that stopped before the manifest; truncated vectors; garbage manifest.
    broken = {
        "no-manifest": lambda d: (d / "manifest.json").unlink(),
        "truncated": lambda d: (d / "item_vectors.npy").write_bytes((d / "item_vectors.npy").read_bytes()[:100]),
        "bad-json": lambda d: (d / "manifest.json").write_text('{"format_version": 1, "model": '),
        "bad-onnx": lambda d: (d / "model.onnx").write_bytes(b"\x08\x07garbage"),
    }
    for n, (name, damage) in enumerate(broken.items(), start=1):
        shutil.copytree(other, root / "releases" / name)
        damage(root / "releases" / name)
        publish(name)
        wait_for(lambda n=n: rejected() >= n, 30, f"the {name} bundle to be refused", interval=0.1)
        assert serving() == "sasrec-a"
        r = rec(api.base, "nobody")
        assert r.status_code == 200 and r.json()["bundle"] == "sasrec-a"

    # The explicit reload endpoint refuses it too.
    r = httpx.post(
        f"{api.base}/admin/reload", json={"bundles": [str(root / "releases" / "truncated")]}, headers=KEY, timeout=30
    )
    assert r.status_code == 422 and serving() == "sasrec-a"

    # A complete new bundle is picked up without a restart.
    shutil.copytree(other, root / "releases" / "next")
    publish("next")
    wait_for(lambda: serving() == "sasrec-b", 30, "the new bundle", interval=0.1)
    assert rec(api.base, "nobody").json()["bundle"] == "sasrec-b"


def test_redis_full_refuses_writes_but_evicts_nothing(redis_proc: RedisProc, api_factory, deploy_bundle: Path) -> None:
    """maxmemory-policy noeviction: past the limit writes get 503 (retry), reads and stored histories stay."""
    api = api_factory([deploy_bundle], redis_proc.url, SEQREC_KEY_PREFIX="oom:")
    items = item_ids(deploy_bundle)
    seed_user(api.base, "u-oom", items[:10])
    client = redis_proc.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 300_000))
    acked: list[dict] = []
    codes = []
    for n in range(400):
        batch = [{"user_id": f"oom-u{n}", "item_id": items[j], "event_id": f"e{j}"} for j in range(50)]
        r = post(api.base, batch)
        codes.append(r.status_code)
        if r.status_code == 200:
            acked.extend(batch)
        else:
            assert r.status_code == 503 and "retry-after" in r.headers, r.text
            break
    assert codes[-1] == 503, "memory limit never reached"
    assert acked, "some writes fit before the limit"
    # Nothing acknowledged was evicted to make room, and reads still answer from the model.
    pipe = client.pipeline(transaction=False)
    for ev in acked:
        pipe.zscore(f"oom:h:{ev['user_id']}", f"{ev['event_id']}\x1f{ev['item_id']}")
    assert all(s is not None for s in pipe.execute())
    r = rec(api.base, "u-oom")
    assert r.status_code == 200 and r.json()["source"] == "model" and r.json()["history_length"] == 10
    client.config_set("maxmemory", "1gb")
    assert post(api.base, [{"user_id": "oom-after", "item_id": items[0]}]).status_code == 200
    client.close()
