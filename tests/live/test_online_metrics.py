"""Online-metric arithmetic and the variant assignment, without a server."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import pytest

from app.runtime.metrics import Metrics
from app.serving.experiment import Experiment, ExperimentError
from app.serving.online import Live, OnlineMetrics, Score, make_live, score, summarize
from app.stores.ledger import MemoryLedger, Served
from tests.support.procs import ROOT


def test_score_arithmetic() -> None:
    items = ["a", "b", "c", "d"]
    assert score(items, "a", 10) == Score(1, 1.0, 1.0, 1.0)
    s = score(items, "c", 10)
    assert (s.rank, s.hit, s.rr) == (3, 1.0, 1 / 3) and s.ndcg == pytest.approx(1 / math.log2(4))
    assert score(items, "d", 3) == Score(4, 0.0, 0.25, 0.0)  # beyond k: no hit, rank still counts for MRR
    assert score(items, "z", 10) == Score(None, 0.0, 0.0, 0.0)


def test_hand_built_sequence() -> None:
    """Served lists and events by hand; every number of the summary worked out on paper."""

    async def go() -> tuple[int, list[dict]]:
        live = Live(MemoryLedger(ttl_s=3600), OnlineMetrics(Metrics().registry), k=3)
        live.served("u1", "A", "control", ["x", "y", "z", "w"])  # kept: x, y, z (k = 3)
        live.served("u2", "B", "treatment", ["y", "q", "r"])
        live.served("u3", "A", "control", ["x", "q", "p"])
        await live.drain()
        live.observe([("u1", "y", 10.0), ("u1", "x", 11.0)])  # rank 2; the 2nd u1 event: unserved
        live.observe([("u2", "r", 12.0)])  # rank 3
        live.observe([("u3", "nope", 13.0)])  # a miss
        live.observe([("u4", "x", 14.0)])  # never served: unserved, not a miss
        live.observe([("u1", "x", 15.0)])  # u1's list was used up by the first event: unserved
        await live.drain()
        return summarize(await live.window(5), {"A": 10, "B": 4}.get)

    unserved, rows = asyncio.run(go())
    assert unserved == 3
    a, b = rows
    assert (a["bundle"], a["variant"], a["served"], a["scored"], a["hits"]) == ("A", "control", 2, 2, 1)
    assert (a["users"], b["users"]) == (2, 1)  # u1 and u3 scored control's lists, u2 treatment's
    assert a["hit_rate"] == 0.5
    assert a["mrr"] == pytest.approx((1 / 2 + 0) / 2)
    assert a["ndcg"] == pytest.approx((1 / math.log2(3)) / 2)
    assert a["distinct_items"] == 5 and a["coverage"] == 0.5  # x y z q p of 10
    assert (b["scored"], b["hits"], b["mrr"]) == (1, 1, pytest.approx(1 / 3))
    assert b["ndcg"] == pytest.approx(0.5) and b["coverage"] == 3 / 4


def test_expired_list_is_not_scored() -> None:
    now = [0.0]

    async def go() -> tuple[int, list[dict]]:
        live = Live(MemoryLedger(ttl_s=60), OnlineMetrics(Metrics().registry), clock=lambda: now[0])
        live.bundles = lambda: ["A"]
        live.served("u", "A", "default", ["x"])
        await live.drain()
        now[0] = 61.0  # the event arrives 61 s after the answer: past the 60 s TTL
        live.observe([("u", "x", 1.0)])
        await live.drain()
        return summarize(await live.window(5), lambda _: 1)

    unserved, rows = asyncio.run(go())
    assert unserved == 1 and rows[0]["scored"] == 0


def test_failing_ledger_is_skipped_and_counted() -> None:
    class Down(MemoryLedger):
        async def take(self, asks, bundles):  # type: ignore[no-untyped-def]
            raise ConnectionError("redis down")

    async def go() -> float:
        m = OnlineMetrics(Metrics().registry)
        live = Live(Down(ttl_s=60), m)
        live.observe([("u", "x", 1.0)])
        await live.drain()
        return m.skipped.labels("observe")._value.get()

    assert asyncio.run(go()) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a=x:50,b=y:40", "sum to 90"),
        ("a=x:50,a=y:50", "variant 2: the variant name is used twice"),
        ("a=x:0,b=y:100", "variant 1: the weight must be a positive number"),
        ("a=x:-10,b=y:110", "must be a positive number"),
        ("a=x:fifty,b=y:50", "not a number"),
        ("a=x,b=y:50", "expected name=bundle:weight"),
        ("default=x:100", "reserved"),
        ("", "at least one variant"),
    ],
)
def test_bad_experiments_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        Experiment.parse(spec)


def test_assignment_matches_weights_on_100k_ids() -> None:
    exp = Experiment.parse("control=a:70,treatment=b:20,other=c:10", salt="2026-12")
    counts = {"control": 0, "treatment": 0, "other": 0}
    for i in range(100_000):
        counts[exp.assign(f"user-{i}").name] += 1
    # Binomial sd at 100k draws is <= 0.16 points; 0.6 points is ~4 sd.
    assert abs(counts["control"] / 1000 - 70) < 0.6
    assert abs(counts["treatment"] / 1000 - 20) < 0.6
    assert abs(counts["other"] / 1000 - 10) < 0.6
    other_salt = Experiment.parse("control=a:70,treatment=b:20,other=c:10", salt="other")
    moved = sum(exp.assign(f"user-{i}").name != other_salt.assign(f"user-{i}").name for i in range(2000))
    assert moved > 500  # a new salt reshuffles


def test_assignment_is_the_same_in_another_process() -> None:
    code = (
        "from app.serving.experiment import Experiment\n"
        "e = Experiment.parse('control=a:50,treatment=b:50', salt='s1')\n"
        "print(''.join(e.assign(f'u{i}').name[0] for i in range(500)))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": s},
        ).stdout
        for s in ("1", "2")
    }
    here = Experiment.parse("control=a:50,treatment=b:50", salt="s1")
    assert runs == {"".join(here.assign(f"u{i}").name[0] for i in range(500)) + "\n"}


def test_serve_refuses_a_bad_experiment_before_starting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PATH": "/usr/bin:/bin", "SEQREC_EXPERIMENT": "a=x:50,b=y:60"}
    r = subprocess.run(
        [sys.executable, "-m", "training.cli", "serve", "--bundle", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "SEQREC_EXPERIMENT: variant weights sum to 110" in r.stderr
    assert "Traceback" not in r.stderr


class SlowLedger(MemoryLedger):
    """A store whose list writes take 20 ms: events can overtake them."""

    async def remember(self, batch):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.02)
        await super().remember(batch)


def test_event_right_after_the_answer_waits_for_the_list_write() -> None:
    """A slow store: the next event arrives while the served list is still being written."""

    async def go() -> tuple[int, list[dict]]:
        live = Live(SlowLedger(ttl_s=60), OnlineMetrics(Metrics().registry))
        live.served("u", "A", "default", ["x", "y"])
        live.observe([("u", "y", 1.0)])  # no drain in between
        await live.drain()
        return summarize(await live.window(5), lambda _: 2)

    unserved, rows = asyncio.run(go())
    assert unserved == 0 and rows[0]["scored"] == 1 and rows[0]["hits"] == 1


def test_rapid_answers_and_events_score_each_event_against_the_list_before_it() -> None:
    """recommend, event, recommend, event, ... faster than the store writes (the replay pattern)."""

    async def go() -> tuple[int, list[dict]]:
        live = Live(SlowLedger(ttl_s=60), OnlineMetrics(Metrics().registry), k=2)
        live.served("u", "A", "default", ["x", "y"])
        live.observe([("u", "y", 1.0)])  # rank 2 in the first list
        live.served("u", "A", "default", ["z", "w"])  # computed after y: does not hold it
        live.observe([("u", "z", 2.0)])  # rank 1 in the second list
        live.observe([("u", "q", 3.0)])  # nothing served since: unserved
        await live.drain()
        return summarize(await live.window(5), lambda _: 4)

    unserved, rows = asyncio.run(go())
    assert unserved == 1
    assert (rows[0]["served"], rows[0]["scored"], rows[0]["hits"]) == (2, 2, 2)
    assert rows[0]["mrr"] == pytest.approx((1 / 2 + 1) / 2)


class SharedSlowLedger(MemoryLedger):
    """One ledger that two `Live`s (two processes) share; list writes take `delay_s`."""

    shared = True

    def __init__(self, delay_s: float) -> None:
        super().__init__(ttl_s=60)
        self.delay_s = delay_s

    async def remember(self, batch):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay_s)
        await super().remember(batch)


def test_event_in_another_process_during_the_batch_window_is_scored() -> None:
    """Process A serves (its write lands 30 ms later: batch window + a slow store); the user's
    next event reaches process B at once. B looks after the settle time and finds the list."""

    async def go() -> tuple[int, list[dict]]:
        ledger, reg = SharedSlowLedger(0.02), Metrics().registry
        a = Live(ledger, OnlineMetrics(reg), write_delay_s=0.01, settle_s=0.1, bundles=lambda: ["A"])
        b = Live(ledger, OnlineMetrics(Metrics().registry), write_delay_s=0.01, settle_s=0.1, bundles=lambda: ["A"])
        a.served("u", "A", "default", ["x", "y"])
        b.observe([("u", "y", 1.0)])
        await asyncio.gather(a.drain(), b.drain())
        window_a, window_b = await a.window(5), await b.window(5)
        assert window_a == window_b  # the same ledger: the window sums both processes
        return summarize(window_a, lambda _: 2)

    unserved, rows = asyncio.run(go())
    assert unserved == 0
    assert (rows[0]["served"], rows[0]["scored"], rows[0]["hits"]) == (1, 1, 1)


def test_a_list_served_after_the_event_is_never_scored_against_it() -> None:
    """B sees an event with no list before it; A serves a list right after (before B looks): that
    list was computed after the event, so it is left for the user's next event, which it scores."""

    async def go() -> tuple[int, list[dict]]:
        clock = [100.0]
        ledger = SharedSlowLedger(0.0)
        a = Live(ledger, OnlineMetrics(Metrics().registry), k=2, settle_s=0.05, clock=lambda: clock[0])
        b = Live(ledger, OnlineMetrics(Metrics().registry), k=2, settle_s=0.05, clock=lambda: clock[0])
        a.bundles = b.bundles = lambda: ["A"]
        b.observe([("u", "x", 1.0)])  # nothing served yet
        await asyncio.sleep(0.01)
        clock[0] = 101.0
        a.served("u", "A", "default", ["x", "y"])  # after the event: it must not count for it
        await asyncio.gather(a.drain(), b.drain())
        b.observe([("u", "y", 2.0)])  # the next event: scored against that list (rank 2)
        await b.drain()
        return summarize(await b.window(5), lambda _: 2)

    unserved, rows = asyncio.run(go())
    assert unserved == 1
    assert (rows[0]["scored"], rows[0]["hits"]) == (1, 1) and rows[0]["mrr"] == 0.5


@pytest.fixture(params=["memory", "redis", "cluster"])
def ledger_factory(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Makes a ledger of each kind (the same contract): in process, a private redis-server, and a
    Redis Cluster (every script call's keys in one slot: the user's, or the experiment variant's)."""
    if request.param == "memory":
        yield lambda **kw: MemoryLedger(**kw)
        return
    import uuid

    import redis.asyncio as aioredis

    from app.stores.cluster import ClusterStore
    from app.stores.ledger import RedisLedger, online_ledger

    if request.param == "redis":
        url = request.getfixturevalue("redis_proc").url
        yield lambda **kw: RedisLedger(aioredis.Redis.from_url(url, decode_responses=True), "t:", timeout=5.0, **kw)
        return
    url, prefix = request.getfixturevalue("redis_cluster").url, f"t{uuid.uuid4().hex[:8]}:"

    def cluster(ttl_s: float, **kw: float) -> object:
        store = ClusterStore(url, max_history=10, ttl_s=60, prefix=prefix, read_timeout=5.0)
        return online_ledger(store, prefix, int(ttl_s), 5.0, **kw)  # type: ignore[arg-type]

    yield cluster


def test_ledger_take_contract(ledger_factory) -> None:  # type: ignore[no-untyped-def]
    """Per bundle, an event takes the latest list served at or before it, once; later lists stay;
    an earlier list is not taken by an event that comes after a later one; the TTL holds."""

    async def go() -> None:
        led = ledger_factory(ttl_s=60, horizon_s=100.0)
        l0, l1, l2 = (Served("A", "c", (x,), t) for x, t in (("p", 5.0), ("q", 10.0), ("r", 20.0)))
        b1 = Served("B", "t", ("z",), 9.0, "exp1")
        await led.remember([("u", l0), ("u", l1), ("u", b1)])
        await led.remember([("u", l2)])
        assert await led.take([("u", 25.0)], ["A", "B"]) == [[l2, b1]]  # out of order: the later event first
        assert await led.take([("u", 15.0)], ["A", "B"]) == [[l1]]  # still finds its own list (l1, not l0)
        assert await led.take([("u", 15.0), ("u", 26.0)], ["A", "B"]) == [[], []]  # each list scored once
        assert await led.take([("nobody", 15.0)], ["A"]) == [[]]
        assert await led.take([("u", 7.0)], ["A"]) == [[l0]]  # an event between l0 and l1 had l0
        # the TTL: a list counts for an event at most 60 s after it was served
        await led.remember([("v", Served("A", "c", ("x",), 100.0))])
        assert await led.take([("v", 161.0)], ["A"]) == [[]]
        assert await led.take([("v", 160.0)], ["A"]) == [[Served("A", "c", ("x",), 100.0)]]

    asyncio.run(go())


def test_ledger_drops_lists_no_event_can_need(ledger_factory) -> None:  # type: ignore[no-untyped-def]
    """A list goes once its successor is older than the horizon (every event it could be the
    prediction for has been looked up by then); the newest of those stays; a burst is capped."""

    async def go() -> None:
        led = ledger_factory(ttl_s=600, horizon_s=1.0, max_lists=3)
        await led.remember([("x", Served("A", "c", (str(t),), t)) for t in (0.0, 0.5, 1.0)])
        await led.remember([("x", Served("A", "c", ("10.0",), 10.0))])  # 0.0 and 0.5 were followed 9 s ago
        assert await led.take([("x", 0.7)], ["A"]) == [[]]
        assert await led.take([("x", 5.0)], ["A"]) == [[Served("A", "c", ("1.0",), 1.0)]]  # may still be awaited
        assert await led.take([("x", 11.0)], ["A"]) == [[Served("A", "c", ("10.0",), 10.0)]]
        # within the horizon, lists stay, up to max_lists: the oldest of four goes
        await led.remember([("w", Served("A", "c", (str(i),), 100 + i / 10)) for i in range(4)])
        assert await led.take([("w", 100.05)], ["A"]) == [[]]
        assert await led.take([("w", 100.15)], ["A"]) == [[Served("A", "c", ("1",), 100.1)]]

    asyncio.run(go())


def test_totals_and_their_sums_agree_with_a_recount(ledger_factory) -> None:  # type: ignore[no-untyped-def]
    """Per-user totals merged over several flushes (the Redis script or in process) keep the
    variant's sums equal to the sums recomputed from the users' final totals."""
    import random

    from app.serving.abtest import Arm
    from app.stores.ledger import SUMS

    async def go() -> None:
        led = ledger_factory(ttl_s=60)
        rng = random.Random(7)
        truth: dict[str, list[float]] = {}
        for flush in range(5):
            per_user = {}
            for u in rng.sample(range(40), 15):
                add = [rng.randint(0, 3), rng.randint(0, 3), 0.0, 0.0, 0.0]
                add[2] = float(rng.randint(0, int(add[1])))
                add[3], add[4] = add[2] * rng.random(), add[2] * rng.random()
                per_user[f"u{u}"] = add
                old = truth.get(f"u{u}", [0.0] * 5)
                truth[f"u{u}"] = [a + b for a, b in zip(old, add, strict=True)]
            await led.add({}, {}, {}, {("exp1", "control"): per_user}, 1000.0 + flush)
        got = (await led.experiment("exp1", ["control", "treatment"]))["control"]
        want = Arm.from_users(truth.values()).sums
        assert got["start"] == 1000.0
        for name in SUMS:
            assert got.get(name, 0.0) == pytest.approx(want.get(name, 0.0), rel=1e-9, abs=1e-9), name

    asyncio.run(go())


def test_list_served_within_the_window_after_an_event_is_left_for_the_next_one() -> None:
    """recommend, event, recommend, event for one user inside one batch window (a user rating
    several items in a row): the second list is written while the first event waits for the
    write, and must be left for the second event, not taken by the first."""

    async def go() -> tuple[int, list[dict]]:
        clock = [100.0]

        def tick() -> float:
            clock[0] += 0.001
            return clock[0]

        ledger = SharedSlowLedger(0.0)
        live = Live(ledger, OnlineMetrics(Metrics().registry), k=2, write_delay_s=0.02, settle_s=0.05, clock=tick)
        live.bundles = lambda: ["A"]
        live.served("u", "A", "default", ["x", "y"])
        live.observe([("u", "x", 1.0)])  # rank 1 in the first list
        live.served("u", "A", "default", ["z", "w"])  # after the event, same batch window
        await asyncio.sleep(0.03)  # both lists' writer has run; the first event's take too
        live.observe([("u", "w", 2.0)])  # rank 2 in the second list
        await live.drain()
        return summarize(await live.window(5), lambda _: 4)

    unserved, rows = asyncio.run(go())
    assert unserved == 0
    assert (rows[0]["served"], rows[0]["scored"], rows[0]["hits"]) == (2, 2, 2)
    assert rows[0]["mrr"] == pytest.approx((1 + 1 / 2) / 2)


def test_each_event_waits_its_own_settle_time() -> None:
    """An event that arrives while an earlier event's look is pending still waits the full
    `settle_s` after its own arrival (the other process's list lands 30 ms after the answer)."""

    async def go() -> tuple[int, list[dict]]:
        ledger = SharedSlowLedger(0.0)
        a = Live(ledger, OnlineMetrics(Metrics().registry), write_delay_s=0.03, settle_s=0.1, bundles=lambda: ["A"])
        b = Live(ledger, OnlineMetrics(Metrics().registry), write_delay_s=0.03, settle_s=0.1, bundles=lambda: ["A"])
        b.observe([("nobody", "x", 1.0)])  # never served: its look is due in 0.1 s
        await asyncio.sleep(0.09)
        a.served("u", "A", "default", ["x", "y"])  # written 30 ms later, after that look
        await asyncio.sleep(0.001)
        b.observe([("u", "y", 2.0)])
        await asyncio.gather(a.drain(), b.drain())
        return summarize(await b.window(5), lambda _: 2)

    unserved, rows = asyncio.run(go())
    assert unserved == 1  # "nobody" only
    assert (rows[0]["scored"], rows[0]["hits"]) == (1, 1)


def test_random_routing_between_two_processes_scores_every_event_against_its_list() -> None:
    """40 users, 8 answer/event pairs each, as fast as the loop goes, each answer and each event
    handled by one of two processes at random, list writes taking 0-20 ms: every event is scored,
    against the list served just before it (the hits match the client's own count)."""
    import random

    class Jittery(MemoryLedger):
        shared = True

        async def remember(self, batch):  # type: ignore[no-untyped-def]
            await asyncio.sleep(rng.random() * 0.02)
            await super().remember(batch)

    rng = random.Random(5)

    async def go() -> tuple[int, list[dict], int, int]:
        ledger = Jittery(ttl_s=60, horizon_s=1.0)
        kw = {"k": 3, "write_delay_s": 0.01, "settle_s": 0.05, "bundles": lambda: ["A"]}
        procs = [Live(ledger, OnlineMetrics(Metrics().registry), **kw) for _ in range(2)]  # type: ignore[arg-type]
        hits = sent = 0

        async def user(n: int) -> None:
            nonlocal hits, sent
            for step in range(8):
                served = [f"i{(n + step + j) % 7}" for j in range(3)]
                rng.choice(procs).served(f"u{n}", "A", "default", served)
                await asyncio.sleep(0)
                nxt = served[step % 3] if step % 2 else "nothing"
                rng.choice(procs).observe([(f"u{n}", nxt, float(step))])
                hits += nxt in served
                sent += 1
                await asyncio.sleep(rng.random() * 0.005)

        await asyncio.gather(*(user(n) for n in range(40)))
        await asyncio.gather(*(p.drain() for p in procs))
        unserved, rows = summarize(await procs[0].window(5), lambda _: 7)
        return unserved, rows, hits, sent

    unserved, rows, hits, sent = asyncio.run(go())
    assert unserved == 0 and rows[0]["scored"] == sent == 320 and rows[0]["hits"] == hits


def test_redis_ledger_writes_after_its_script_is_flushed(redis_proc) -> None:  # type: ignore[no-untyped-def]
    """Lists are written by EVALSHA; a Redis that lost the script (restart, SCRIPT FLUSH) gets it
    again by EVAL, and no list is lost."""
    import redis.asyncio as aioredis

    from app.stores.ledger import RedisLedger

    async def go() -> None:
        r = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)
        led = RedisLedger(r, "f:", ttl_s=60, timeout=5.0)
        for n in range(3):
            await r.script_flush()
            lists = [(f"u{n}", Served("A", "c", ("x",), 10.0)), (f"v{n}", Served("A", "c", ("y",), 10.0))]
            await led.remember(lists[:1])  # the single-command path
            await led.remember(lists)  # the pipeline (u again: the same list, a no-op)
            got = await led.take([(f"u{n}", 11.0), (f"v{n}", 11.0)], ["A"])
            assert got == [[lists[0][1]], [lists[1][1]]]
            assert await r.zcard(f"f:sl:u{n}:A") == 1
        await r.aclose()

    asyncio.run(go())


def test_statistics_reads_get_the_longer_budget(redis_proc) -> None:  # type: ignore[no-untyped-def]
    """A day's window (1,440 minute buckets) has no fallback answer: it is read within the stats
    budget (the write timeout), not the hot path's history-read timeout, which it would exceed."""
    import redis.asyncio as aioredis

    from app.settings import Settings
    from app.stores.ledger import RedisLedger
    from app.stores.redis import RedisStore

    async def go() -> None:
        r = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)
        hot = 1e-6  # no round trip fits in it
        await r.ping()  # connected: what times out below is the read itself
        with pytest.raises(TimeoutError):
            await RedisLedger(r, "st:", ttl_s=60, timeout=hot).window(list(range(1440)))
        led = RedisLedger(r, "st:", ttl_s=60, timeout=hot, stats_timeout=5.0)
        assert (await led.window(list(range(1440)))).counts == {}
        assert await led.experiment("scope", ["a", "b"]) == {} and await led.decisions(3) == []
        await r.aclose()
        # The service passes SEQREC_REDIS_WRITE_TIMEOUT_S as the statistics budget.
        settings = Settings(bundles=["unused"], redis_url=redis_proc.url, redis_timeout=0.01, redis_write_timeout=3.0)
        store = RedisStore(redis_proc.url, 10, 60, prefix="st:", read_timeout=0.01)
        live = make_live(settings, store, Metrics())
        assert live.ledger.timeout == 0.01 and live.ledger.stats_timeout == 3.0  # type: ignore[attr-defined]
        await store.close()

    asyncio.run(go())
