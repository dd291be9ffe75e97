"""Online evaluation: score what was served against what the user did next.

Every answer of GET /recommend is remembered per user and bundle (the top `k` ids, with the
variant that served it, for `ttl_s`). When the user's next event arrives (POST /events), each
list remembered for that user is scored against the event's item and then forgotten:

    rank r = the item's 1-based position in the list (none when absent)
    hit@k = [r <= k]      reciprocal rank = 1/r (0 when absent)      NDCG@k = 1/log2(r + 1)

An event with no list remembered for its user counts as `unserved`, not as a miss. Only the
user's first event of a batch (by time) is scored: it is the one the list was a prediction
for. Catalogue coverage is the number of distinct items served over the window divided by the
catalogue size, per bundle and variant.

Where it lives (app/stores/ledger.py): with Redis, next to the history (`{prefix}s:{user}:{bundle}` the list, in
the user's slot on a cluster; `{prefix}o:{minute}` a hash of counters per minute;
`{prefix}o:c:{<bundle>|<variant>}:{minute}` a HyperLogLog of served items, hash-tagged by group
so a window's union is one PFCOUNT), so every worker and replica adds to the same numbers and
`GET /stats/online` reads them over any window; in process for the in-process store. Every
command touches one key, or keys of one hash tag, so the same code runs on a Redis Cluster.

Tracking never delays or fails a request: it runs in background tasks, a failing or slow
Redis skips it (counted in `seqrec_online_skipped_total`), and at most `max_inflight`
tracking tasks run at once (more are skipped too).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from app.stores.ledger import MINUTE, Counts, Items, Ledger, MemoryLedger, Served, online_ledger

log = logging.getLogger("seqrec.app")

FIELDS = ("served", "scored", "hits", "rr", "ndcg")


@dataclass(frozen=True, slots=True)
class Score:
    rank: int | None
    hit: float
    rr: float
    ndcg: float


def score(items: Sequence[str], target: str, k: int) -> Score:
    """hit@k, reciprocal rank and NDCG@k of one served list against the next item."""
    try:
        r = list(items).index(target) + 1
    except ValueError:
        return Score(None, 0.0, 0.0, 0.0)
    if r > k:
        return Score(r, 0.0, 1.0 / r, 0.0)
    return Score(r, 1.0, 1.0 / r, 1.0 / math.log2(r + 1))


def _key(bundle: str, variant: str, what: str) -> str:
    return f"{bundle}|{variant}|{what}"


class OnlineMetrics:
    """`seqrec_online_*` Prometheus series. Labels: bundle and variant only, never users or items."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.served = Counter("seqrec_online_served_total", "Lists remembered", ["bundle", "variant"], registry=r)
        self.events = Counter(
            "seqrec_online_events_total", "Events by online outcome (scored, unserved)", ["outcome"], registry=r
        )
        self.scored = Counter(
            "seqrec_online_scored_total", "Served lists scored by a next event", ["bundle", "variant"], registry=r
        )
        self.hits = Counter(
            "seqrec_online_hits_total", "Next items within the top k", ["bundle", "variant"], registry=r
        )
        self.rr = Counter(
            "seqrec_online_reciprocal_rank_total", "Sum of reciprocal ranks", ["bundle", "variant"], registry=r
        )
        self.ndcg = Counter("seqrec_online_ndcg_total", "Sum of NDCG@k", ["bundle", "variant"], registry=r)
        self.skipped = Counter(
            "seqrec_online_skipped_total", "Tracking skipped (store error, overload)", ["op"], registry=r
        )


@dataclass
class Live:
    """Online tracking; one per process, held by AppState (which also holds the experiment).

    Per answer, the only store work is one single-key command (the user's list), and the
    answers of `write_delay_s` (SEQREC_ONLINE_BATCH_MS) share one pipeline; counters and
    coverage accumulate in process and are flushed every `flush_s` (so GET /stats/online lags
    by at most that).

    The batch window never costs correctness: an event that reaches this process while its
    user's list is queued here takes it from the queue; one that finds no list in a shared
    ledger is looked up once more `retry_s` later (the longest another process's write of a
    list can take: its batch window plus the store timeout), then only for a list served
    before the event arrived, so a list served after it is never scored against it."""

    ledger: Ledger
    metrics: OnlineMetrics
    k: int = 10
    tracking: bool = True
    max_inflight: int = 1000
    flush_s: float = 1.0
    write_delay_s: float = 0.0
    retry_s: float = 0.0  # 0 = no second look (a ledger no other process writes to needs none)
    clock: Callable[[], float] = time.time
    bundles: Callable[[], Iterable[str]] = tuple  # names of the bundles now served (lists are per bundle)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _outbox: list[tuple[str, Served]] = field(default_factory=list)
    _writer: asyncio.Task[None] | None = None
    # The user's served list still being written, so that the user's next event, when it reaches
    # this process first, is scored after the write and not counted as unserved.
    _writing: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _counts: Counts = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    _items: Items = field(default_factory=lambda: defaultdict(set))
    _flusher: asyncio.Task[None] | None = None
    # Events (user, item, arrival time, loop time due) that found no list: looked up again
    # `retry_s` after their own first look, by one task for all.
    _second: list[tuple[str, str, float, float]] = field(default_factory=list)
    _retrier: asyncio.Task[None] | None = None

    def _spawn(self, op: str, coro: Any) -> asyncio.Task[None] | None:
        if len(self._tasks) >= self.max_inflight:
            coro.close()
            self.metrics.skipped.labels(op).inc()
            return None
        task = asyncio.get_running_loop().create_task(self._guard(op, coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every())
        return task

    async def _guard(self, op: str, coro: Any) -> None:
        try:
            await coro
        except Exception as exc:  # tracking must never surface: count it and go on
            self.metrics.skipped.labels(op).inc()
            log.debug("online tracking %s skipped: %r", op, exc)

    def minute(self) -> int:
        return int(self.clock() // MINUTE)

    def served(self, user: str, bundle: str, variant: str, items: Sequence[str]) -> None:
        """Remember a served list (non-blocking)."""
        if not self.tracking:
            return
        entry = Served(bundle, variant, tuple(items[: self.k]), self.clock())
        self.metrics.served.labels(bundle, variant).inc()
        minute, group = self.minute(), f"{bundle}|{variant}"
        self._counts[minute][f"{group}|served"] += 1
        self._items[(minute, group)].update(entry.items)
        if len(self._outbox) >= self.max_inflight:
            self.metrics.skipped.labels("served").inc()
            return
        self._outbox.append((user, entry))
        if self._writer is None:
            self._writer = self._spawn("served", self._write_outbox())
        if self._writer is not None:
            self._writing[user] = self._writer

    async def _write_outbox(self) -> None:
        # Answers of `write_delay_s` join the batch: one pipeline for all.
        # The user's next event, if it reaches this process meanwhile, takes the list from the
        # queue (observe) or waits for the write in flight (`_writing`).
        await asyncio.sleep(self.write_delay_s)
        batch, self._outbox, me = self._outbox, [], self._writer
        self._writer = None
        try:
            await self.ledger.remember(batch)
        except Exception as exc:
            self.metrics.skipped.labels("served").inc(len(batch))
            log.debug("online tracking: %d served lists not kept: %r", len(batch), exc)
        finally:
            for user, _ in batch:
                if self._writing.get(user) is me:
                    del self._writing[user]

    def observe(self, events: Iterable[tuple[str, str, float]]) -> None:
        """Score the users' next events (user, item, time) against what they were served (non-blocking)."""
        if not self.tracking:
            return
        first: dict[str, tuple[float, str]] = {}
        extra = 0
        for user, item, ts in events:
            if user not in first:
                first[user] = (ts, item)
            else:
                extra += 1
                if ts < first[user][0]:
                    first[user] = (ts, item)
        if not first:
            return
        # Lists of these users not yet sent to the store are taken here, in request order: a
        # list served after this event (still queued) must not be scored against it.
        queued: dict[str, dict[str, Served]] = {}
        if self._outbox:
            keep = []
            for user, entry in self._outbox:
                if user in first:
                    queued.setdefault(user, {})[entry.bundle] = entry  # the newest per bundle
                else:
                    keep.append((user, entry))
            self._outbox = keep
        self._spawn("observe", self._observe({u: it for u, (_, it) in first.items()}, extra, queued, self.clock()))

    async def _observe(
        self, next_item: dict[str, str], extra: int, queued: dict[str, dict[str, Served]], arrived: float
    ) -> None:
        writing = {t for u in next_item if (t := self._writing.get(u)) is not None}
        if writing:
            await asyncio.wait(writing)
        # Only lists served before the event arrived: one served after it (the user asked again
        # while this event waited) may already be stored, and it stays for the user's next event.
        stored = await self.ledger.take(list(next_item), list(self.bundles()), [arrived] * len(next_item))
        lists: dict[str, list[Served]] = {}
        for user in next_item:
            by_bundle = {e.bundle: e for e in stored.get(user, [])}
            for b, e in queued.get(user, {}).items():  # per bundle, the list served last before the event
                if b not in by_bundle or e.at >= by_bundle[b].at:
                    by_bundle[b] = e
            if by_bundle:
                lists[user] = list(by_bundle.values())
        missing = [u for u in next_item if u not in lists]
        if missing and self.retry_s > 0 and self.ledger.shared and len(self._second) < 10 * self.max_inflight:
            # Another process may still be writing the list it served before this event.
            due = asyncio.get_running_loop().time() + self.retry_s
            self._second.extend((u, next_item[u], arrived, due) for u in missing)
            if self._retrier is None:
                self._retrier = self._spawn("observe", self._look_again())
            if self._retrier is not None:
                missing = []
            else:  # over the in-flight bound: counted unserved now
                self._second.clear()
        self._score(next_item, lists, extra + len(missing))

    async def _look_again(self) -> None:
        loop = asyncio.get_running_loop()
        while self._second:
            await asyncio.sleep(max(0.0, self._second[0][3] - loop.time()))  # the oldest is due first
            now = loop.time()
            batch = [x for x in self._second if x[3] <= now]
            self._second = [x for x in self._second if x[3] > now]
            first: dict[str, tuple[str, float]] = {}
            for user, item, arrived, _ in batch:  # one event per user: the earliest (the rest: unserved)
                first.setdefault(user, (item, arrived))
            users = list(first)
            try:
                stored = await self.ledger.take(users, list(self.bundles()), [first[u][1] for u in users])
            except Exception as exc:  # like a failed first look: skipped and counted, never raised
                self.metrics.skipped.labels("observe").inc()
                log.debug("online tracking: second look skipped: %r", exc)
                continue
            unserved = len(batch) - len(users) + sum(1 for u in users if not stored.get(u))
            self._score({u: first[u][0] for u in users}, stored, unserved)
        self._retrier = None

    def _score(self, next_item: dict[str, str], lists: dict[str, list[Served]], unserved: int) -> None:
        """Count each user's next item against the lists served before it, and `unserved` events."""
        counts = self._counts[self.minute()]
        m = self.metrics
        counts["|unserved"] += unserved
        m.events.labels("unserved").inc(unserved)
        for user, entries in lists.items():
            if user not in next_item:
                continue
            if entries:
                m.events.labels("scored").inc()
            for e in entries:
                s = score(e.items, next_item[user], self.k)
                for what, v in (("scored", 1.0), ("hits", s.hit), ("rr", s.rr), ("ndcg", s.ndcg)):
                    counts[_key(e.bundle, e.variant, what)] += v
                m.scored.labels(e.bundle, e.variant).inc()
                m.hits.labels(e.bundle, e.variant).inc(s.hit)
                m.rr.labels(e.bundle, e.variant).inc(s.rr)
                m.ndcg.labels(e.bundle, e.variant).inc(s.ndcg)

    async def flush(self) -> None:
        """Send the counters gathered in this process to the ledger (lost, and counted, on error)."""
        if not self._counts and not self._items:
            return
        counts, items = self._counts, self._items
        self._counts, self._items = defaultdict(lambda: defaultdict(float)), defaultdict(set)
        try:
            await self.ledger.add({m: dict(c) for m, c in counts.items()}, dict(items))
        except Exception as exc:
            self.metrics.skipped.labels("counts").inc()
            log.debug("online tracking: counters not flushed: %r", exc)

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def drain(self) -> None:
        """Wait for the tracking in flight and flush the counters (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.drain()

    async def window(self, minutes: int) -> tuple[dict[str, float], dict[str, int]]:
        now = self.minute()
        return await self.ledger.window(list(range(now - minutes + 1, now + 1)))


def summarize(
    counts: dict[str, float], distinct: dict[str, int], catalogue: Callable[[str], int | None]
) -> tuple[int, list[dict[str, Any]]]:
    """(unserved events, one row per bundle and variant) from the window's counters."""
    groups: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
    for key, v in counts.items():
        parts = key.split("|")
        if len(parts) == 3 and parts[2] in FIELDS:
            groups[(parts[0], parts[1])][parts[2]] += v
    rows = []
    for (bundle, variant), c in sorted(groups.items()):
        n = int(c["scored"])
        size = catalogue(bundle)
        d = distinct.get(f"{bundle}|{variant}", 0)
        rows.append(
            {
                "bundle": bundle,
                "variant": variant,
                "served": int(c["served"]),
                "scored": n,
                "hits": round(c["hits"]),
                "hit_rate": c["hits"] / n if n else None,
                "mrr": c["rr"] / n if n else None,
                "ndcg": c["ndcg"] / n if n else None,
                "distinct_items": d,
                "coverage": d / size if size else None,
            }
        )
    return int(counts.get("|unserved", 0)), rows


def make_live(settings: Any, store: Any, metrics: Any, bundles: Callable[[], Iterable[str]] = tuple) -> Live:
    """The process's online tracking from the settings (tracking=False: nothing is recorded)."""
    if not settings.online_tracking:
        return Live(MemoryLedger(1), OnlineMetrics(metrics.registry), settings.online_k, tracking=False)
    ledger = online_ledger(store, settings.key_prefix, settings.online_ttl_s, settings.redis_timeout)
    live = Live(
        ledger,
        OnlineMetrics(metrics.registry),
        settings.online_k,
        bundles=bundles,
        write_delay_s=settings.online_batch_ms / 1000,
        # A list another process served is in the store at most its batch window plus the store
        # timeout after the answer (or its write was abandoned and counted as skipped).
        retry_s=settings.online_batch_ms / 1000 + settings.redis_timeout,
    )
    return live
