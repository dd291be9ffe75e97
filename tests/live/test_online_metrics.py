"""Online-metric arithmetic and the variant assignment, without a server."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import pytest

from app.runtime.metrics import Metrics
from app.serving.experiment import Experiment, ExperimentError
from app.serving.online import Live, OnlineMetrics, Score, score, summarize
from app.stores.ledger import MemoryLedger
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
        counts, distinct = await live.window(5)
        return summarize(counts, distinct, {"A": 10, "B": 4}.get)

    unserved, rows = asyncio.run(go())
    assert unserved == 3
    a, b = rows
    assert (a["bundle"], a["variant"], a["served"], a["scored"], a["hits"]) == ("A", "control", 2, 2, 1)
    assert a["hit_rate"] == 0.5
    assert a["mrr"] == pytest.approx((1 / 2 + 0) / 2)
    assert a["ndcg"] == pytest.approx((1 / math.log2(3)) / 2)
    assert a["distinct_items"] == 5 and a["coverage"] == 0.5  # x y z q p of 10
    assert (b["scored"], b["hits"], b["mrr"]) == (1, 1, pytest.approx(1 / 3))
    assert b["ndcg"] == pytest.approx(0.5) and b["coverage"] == 3 / 4


def test_expired_list_is_not_scored() -> None:
    now = [0.0]

    async def go() -> tuple[int, list[dict]]:
        live = Live(MemoryLedger(ttl_s=60, clock=lambda: now[0]), OnlineMetrics(Metrics().registry))
        live.served("u", "A", "default", ["x"])
        await live.drain()
        now[0] = 61.0
        live.observe([("u", "x", 1.0)])
        await live.drain()
        return summarize(*(await live.window(5)), lambda _: 1)

    unserved, rows = asyncio.run(go())
    assert unserved == 1 and rows[0]["scored"] == 0


def test_failing_ledger_is_skipped_and_counted() -> None:
    class Down(MemoryLedger):
        async def take(self, users):  # type: ignore[no-untyped-def]
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
        return summarize(*(await live.window(5)), lambda _: 2)

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
        return summarize(*(await live.window(5)), lambda _: 4)

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
    next event reaches process B at once. B's second look finds the list: scored, not unserved."""

    async def go() -> tuple[int, list[dict]]:
        ledger, reg = SharedSlowLedger(0.02), Metrics().registry
        a = Live(ledger, OnlineMetrics(reg), write_delay_s=0.01, retry_s=0.1, bundles=lambda: ["A"])
        b = Live(ledger, OnlineMetrics(Metrics().registry), write_delay_s=0.01, retry_s=0.1, bundles=lambda: ["A"])
        a.served("u", "A", "default", ["x", "y"])
        b.observe([("u", "y", 1.0)])
        await asyncio.gather(a.drain(), b.drain())
        counts_a, d = await a.window(5)
        counts_b, _ = await b.window(5)  # the same ledger: the window sums both processes
        assert counts_a == counts_b
        return summarize(counts_a, d, lambda _: 2)

    unserved, rows = asyncio.run(go())
    assert unserved == 0
    assert (rows[0]["served"], rows[0]["scored"], rows[0]["hits"]) == (1, 1, 1)


def test_second_look_never_scores_a_list_served_after_the_event() -> None:
    """B sees an event with no list; A serves a new list before B's second look: that list was
    computed after the event, so it is left for the user's next event, and the event is unserved."""

    async def go() -> tuple[int, list[dict]]:
        clock = [100.0]
        ledger = SharedSlowLedger(0.0)
        a = Live(ledger, OnlineMetrics(Metrics().registry), k=2, retry_s=0.05, clock=lambda: clock[0])
        b = Live(ledger, OnlineMetrics(Metrics().registry), k=2, retry_s=0.05, clock=lambda: clock[0])
        a.bundles = b.bundles = lambda: ["A"]
        b.observe([("u", "x", 1.0)])  # nothing served yet
        await asyncio.sleep(0.01)
        clock[0] = 101.0
        a.served("u", "A", "default", ["x", "y"])  # after the event: it must not count for it
        await asyncio.gather(a.drain(), b.drain())
        b.observe([("u", "y", 2.0)])  # the next event: scored against that list (rank 2)
        await b.drain()
        return summarize(*(await b.window(5)), lambda _: 2)

    unserved, rows = asyncio.run(go())
    assert unserved == 1
    assert (rows[0]["scored"], rows[0]["hits"]) == (1, 1) and rows[0]["mrr"] == 0.5


def test_redis_take_before_leaves_later_lists(redis_proc) -> None:  # type: ignore[no-untyped-def]
    """The Redis ledger's conditional take (a Lua script): earlier lists are taken, later ones stay."""
    import redis.asyncio as aioredis

    from app.stores.ledger import RedisLedger, Served

    async def go() -> None:
        r = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)
        ledger = RedisLedger(r, "t:", ttl_s=60, timeout=2.0)
        await ledger.remember([("u1", Served("A", "control", ("x",), 10.0)), ("u2", Served("A", "c", ("y",), 20.0))])
        got = await ledger.take(["u1", "u2"], ["A"], [15.0, 15.0])
        assert got == {"u1": [Served("A", "control", ("x",), 10.0)]}
        assert await ledger.take(["u1"], ["A"]) == {}  # taken once
        assert await ledger.take(["u2"], ["A"]) == {"u2": [Served("A", "c", ("y",), 20.0)]}  # stayed until now
        await r.set("t:s:u3:A", '["old",["z"]]')  # a list written before lists carried their time
        assert await ledger.take(["u3"], ["A"], [0.0]) == {"u3": [Served("A", "old", ("z",), 0.0)]}
        await r.aclose()

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
        live = Live(ledger, OnlineMetrics(Metrics().registry), k=2, write_delay_s=0.02, retry_s=0.05, clock=tick)
        live.bundles = lambda: ["A"]
        live.served("u", "A", "default", ["x", "y"])
        live.observe([("u", "x", 1.0)])  # rank 1 in the first list
        live.served("u", "A", "default", ["z", "w"])  # after the event, same batch window
        await asyncio.sleep(0.03)  # both lists' writer has run; the first event's take too
        live.observe([("u", "w", 2.0)])  # rank 2 in the second list
        await live.drain()
        return summarize(*(await live.window(5)), lambda _: 4)

    unserved, rows = asyncio.run(go())
    assert unserved == 0
    assert (rows[0]["served"], rows[0]["scored"], rows[0]["hits"]) == (2, 2, 2)
    assert rows[0]["mrr"] == pytest.approx((1 + 1 / 2) / 2)


def test_each_event_waits_its_own_second_look() -> None:
    """A miss that joins a second look already pending still waits the full `retry_s` after its
    own first look (the other process's list lands 30 ms after the answer)."""

    async def go() -> tuple[int, list[dict]]:
        ledger = SharedSlowLedger(0.0)
        a = Live(ledger, OnlineMetrics(Metrics().registry), write_delay_s=0.03, retry_s=0.1, bundles=lambda: ["A"])
        b = Live(ledger, OnlineMetrics(Metrics().registry), write_delay_s=0.03, retry_s=0.1, bundles=lambda: ["A"])
        b.observe([("nobody", "x", 1.0)])  # never served: starts a second look due in 0.1 s
        await asyncio.sleep(0.09)
        a.served("u", "A", "default", ["x", "y"])  # written 30 ms later, after that second look
        await asyncio.sleep(0.001)
        b.observe([("u", "y", 2.0)])
        await asyncio.gather(a.drain(), b.drain())
        return summarize(*(await b.window(5)), lambda _: 2)

    unserved, rows = asyncio.run(go())
    assert unserved == 1  # "nobody" only
    assert (rows[0]["scored"], rows[0]["hits"]) == (1, 1)
