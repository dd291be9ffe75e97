"""Where online evaluation keeps its data: Redis (shared by every process, next to the histories) or
this process (the in-process store). What is scored, and how: app/serving/online.py; the statistics
read back from the experiment totals: app/serving/abtest.py.

What is kept:

- served lists: per user and bundle, each list with its serve time, so an event can be scored
  against the latest list served at or before it, whichever process served it and whichever
  process sees the event. A list stays until its successor (the user's next list) is older than
  `horizon_s` (by then every event it could be the prediction for has been looked up; the newest
  list stays for the TTL), and at most `max_lists` stay;
- per-minute counters (served, scored, hits, ...) and, per minute and `bundle|variant`, the served
  item ids (coverage) and the users whose next event scored a list (distinct users);
- per experiment and variant, each user's totals (served, scored, hits, ndcg, rr) and the sums the
  user-clustered statistics need (Σn, Σn², Σm, Σm², Σm·n for each metric m), updated together,
  so reading them back costs one small hash per variant however many users there are;
- the promotion policy's decisions (the last 100) and its one-actor claims.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import NoScriptError

from app.stores.base import EventStore

log = logging.getLogger("seqrec.app")

MINUTE = 60
COUNTER_TTL_S = 25 * 3600  # a day of minute buckets is kept, plus slack
TAKEN = "~"  # a served list an event already took is replaced by this marker (plus its serve time)

# A user's totals in an experiment, in this order (comma-separated in Redis).
TOTALS = ("served", "scored", "hits", "ndcg", "rr")
METRICS = ("hits", "ndcg", "rr")
# The sums over an experiment variant's users that the user-clustered statistics need (abtest.py):
# users served / scored, the totals, and per user squares and cross products with `scored`.
SUMS = (
    "users_served",
    "users",
    *TOTALS,
    "scored2",
    *(f"{m}2" for m in METRICS),
    *(f"{m}_scored" for m in METRICS),
)


@dataclass(frozen=True, slots=True)
class Served:
    bundle: str
    variant: str
    items: tuple[str, ...]
    at: float = 0.0  # when it was served (the serving process's wall clock)
    scope: str = ""  # the experiment it was served under ("" outside one): where its user's totals go


Counts = dict[int, dict[str, float]]  # minute -> counter name -> value
Items = dict[tuple[int, str], set[str]]  # (minute, "bundle|variant") -> item ids served
Users = dict[tuple[int, str], set[str]]  # (minute, "bundle|variant") -> users whose next event scored a list
Totals = dict[tuple[str, str], dict[str, list[float]]]  # (experiment scope, variant) -> user -> TOTALS


@dataclass
class Window:
    """What a window of minutes holds: summed counters, distinct items served and distinct users
    scored per `bundle|variant` (approximate with Redis: HyperLogLog)."""

    counts: dict[str, float]
    items: dict[str, int]
    users: dict[str, int] = field(default_factory=dict)


class Ledger(Protocol):
    """Where served lists, counters and experiment totals live (Redis or this process)."""

    shared: bool  # other processes write to it too (their lists can land after an event is seen here)

    async def remember(self, batch: Sequence[tuple[str, Served]]) -> None:
        """Keep each served list with its serve time, per user and bundle."""
        ...

    async def take(self, asks: Sequence[tuple[str, float]], bundles: Sequence[str]) -> list[list[Served]]:
        """For each (user, event time): per bundle, the latest list served at or before that time
        (and at most the TTL before it), unless an earlier look took it; taken in the same step, so
        it is scored once. A list served after the time stays for the user's next event."""
        ...

    async def add(self, counts: Counts, items: Items, users: Users, totals: Totals, now: float) -> None:
        """Add this process's per-minute counters, served items, scored users and per-user totals."""
        ...

    async def window(self, minutes: Sequence[int]) -> Window:
        """Summed counters, distinct items served and users scored per `bundle|variant`, over these minutes."""
        ...

    async def experiment(self, scope: str, variants: Sequence[str]) -> dict[str, dict[str, float]]:
        """Per variant of the experiment `scope`: the SUMS over its users, and `start` (first write)."""
        ...

    async def claim(self, name: str, ttl_s: float) -> bool:
        """True for the one process that claims `name` first within `ttl_s` (one actor per decision)."""
        ...

    async def record(self, decision: dict[str, Any]) -> None:
        """Keep a promotion decision (the last DECISIONS_KEPT)."""
        ...

    async def decisions(self, n: int) -> list[dict[str, Any]]:
        """The last `n` decisions, newest first."""
        ...


def _newest_before(entries: list[list[Any]], t: float, oldest: float) -> list[Any] | None:
    """The entry [at, Served, taken] served last at or before t (not before `oldest`); entries by time."""
    i = bisect.bisect_right(entries, t, key=lambda e: e[0])
    if i == 0 or entries[i - 1][0] < oldest:
        return None
    return entries[i - 1]


def _merge_user(old: list[float], add: Sequence[float], sums: dict[str, float]) -> list[float]:
    """A user's new totals, and the change of the variant's SUMS (what the Redis script does too)."""
    new = [a + b for a, b in zip(old, add, strict=True)]
    sums["users_served"] += old[0] == 0 and new[0] > 0
    sums["users"] += old[1] == 0 and new[1] > 0
    for name, o, n in zip(TOTALS, old, new, strict=True):
        sums[name] += n - o
    sums["scored2"] += new[1] ** 2 - old[1] ** 2
    for j, m in enumerate(METRICS, start=2):
        sums[f"{m}2"] += new[j] ** 2 - old[j] ** 2
        sums[f"{m}_scored"] += new[j] * new[1] - old[j] * old[1]
    return new


class MemoryLedger:
    """In-process ledger for the in-process store: bounded, single process."""

    shared = False

    def __init__(self, ttl_s: float, max_users: int = 100_000, horizon_s: float = 1.0, max_lists: int = 1000) -> None:
        self.ttl_s, self.max_users, self.horizon_s, self.max_lists = ttl_s, max_users, horizon_s, max_lists
        # user -> bundle -> [[at, Served, taken], ...] in serve-time order
        self._lists: OrderedDict[str, dict[str, list[list[Any]]]] = OrderedDict()
        self._counts: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._items: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._users: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._totals: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(dict)
        self._sums: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._swept = 0  # the minute old buckets were last dropped at
        self._claims: dict[str, float] = {}
        self._decisions: list[dict[str, Any]] = []

    async def remember(self, batch: Sequence[tuple[str, Served]]) -> None:
        for user, entry in batch:
            lists = self._lists.pop(user, {})
            entries = lists.setdefault(entry.bundle, [])
            bisect.insort(entries, [entry.at, entry, False], key=lambda e: e[0])
            # every list but the newest of those served before the horizon: no look can need them
            old = bisect.bisect_left(entries, entry.at - self.horizon_s, key=lambda e: e[0])
            del entries[: max(old - 1, 0)]
            del entries[: -self.max_lists]
            self._lists[user] = lists  # most recent last
        while len(self._lists) > self.max_users:
            self._lists.popitem(last=False)

    async def take(self, asks: Sequence[tuple[str, float]], bundles: Sequence[str]) -> list[list[Served]]:
        out: list[list[Served]] = []
        for user, t in asks:
            got = []
            for entries in self._lists.get(user, {}).values():  # every bundle's: all are in reach here
                e = _newest_before(entries, t, t - self.ttl_s)
                if e is not None and not e[2]:
                    e[2] = True
                    got.append(e[1])
            out.append(got)
        return out

    async def add(self, counts: Counts, items: Items, users: Users, totals: Totals, now: float) -> None:
        for minute, c in counts.items():
            bucket = self._counts[minute]
            for k, v in c.items():
                bucket[k] += v
        for (minute, group), ids in items.items():
            self._items[minute][group] |= ids
        for (minute, group), ids in users.items():
            self._users[minute][group] |= ids
        for arm, per_user in totals.items():
            kept, sums = self._totals[arm], self._sums[arm]
            sums.setdefault("start", now)
            for user, add in per_user.items():
                kept[user] = _merge_user(kept.get(user, [0.0] * len(TOTALS)), add, sums)
        newest = max([*counts, *(m for m, _ in items)], default=self._swept)
        if newest != self._swept:  # drop buckets older than a day, once a minute
            self._swept = newest
            for old in [m for m in self._counts if m < newest - COUNTER_TTL_S // MINUTE]:
                self._counts.pop(old, None)
                self._items.pop(old, None)
                self._users.pop(old, None)

    async def window(self, minutes: Sequence[int]) -> Window:
        total: dict[str, float] = defaultdict(float)
        items: dict[str, set[str]] = defaultdict(set)
        users: dict[str, set[str]] = defaultdict(set)
        for m in minutes:
            for k, v in self._counts.get(m, {}).items():
                total[k] += v
            for k, s in self._items.get(m, {}).items():
                items[k] |= s
            for k, s in self._users.get(m, {}).items():
                users[k] |= s
        return Window(dict(total), {k: len(s) for k, s in items.items()}, {k: len(s) for k, s in users.items()})

    async def experiment(self, scope: str, variants: Sequence[str]) -> dict[str, dict[str, float]]:
        return {v: dict(self._sums[(scope, v)]) for v in variants if (scope, v) in self._sums}

    async def claim(self, name: str, ttl_s: float) -> bool:
        now = time.monotonic()
        if self._claims.get(name, 0.0) > now:
            return False
        self._claims[name] = now + ttl_s
        return True

    async def record(self, decision: dict[str, Any]) -> None:
        self._decisions.insert(0, decision)
        del self._decisions[DECISIONS_KEPT:]

    async def decisions(self, n: int) -> list[dict[str, Any]]:
        return self._decisions[:n]


# A served list: ARGV = serve time, value; the horizon, the most lists and the TTL are written into
# the script (one per configuration), so an answer costs one pipelined EVALSHA of three arguments,
# as one SET of the list did. Lists served before the horizon are dropped but the newest of them
# (an event after it may still be waiting for its look).
REMEMBER = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local old = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. (tonumber(ARGV[1]) - {horizon}))
if old > 1 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, old - 2) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - {max_lists})
redis.call('EXPIRE', KEYS[1], {ttl})
"""

# One event: KEYS = the user's list keys (one per bundle, one hash slot), ARGV = the event's time and
# the oldest serve time that still counts. Per key, the list served last at or before the event is
# returned and replaced by a marker at its time, so no other event scores it; a list an earlier
# event took (the marker) is not returned; lists served after the event stay.
TAKE = """
local out = {}
for i, key in ipairs(KEYS) do
  local top = redis.call('ZREVRANGEBYSCORE', key, ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', 0, 1)
  local v = top[1]
  if v and string.sub(v, 1, 1) ~= '~' then
    redis.call('ZREM', key, v)
    redis.call('ZADD', key, top[2], '~' .. top[2])
    out[i] = v
  else
    out[i] = false
  end
end
return out
"""

# Per-user totals of one experiment variant: KEYS = the user hash and its sums hash (one hash tag),
# ARGV = TTL, now, then (user, "served,scored,hits,ndcg,rr") pairs to add. Keeps the sums of
# squares and cross products in step with the users' totals (the same arithmetic as _merge_user).
MERGE = """
local names = {'users_served', 'users', 'served', 'scored', 'hits', 'ndcg', 'rr',
               'scored2', 'hits2', 'ndcg2', 'rr2', 'hits_scored', 'ndcg_scored', 'rr_scored'}
local d = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
for i = 3, #ARGV, 2 do
  local old = {0, 0, 0, 0, 0}
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local j = 0
    for x in string.gmatch(raw, '[^,]+') do j = j + 1; old[j] = tonumber(x) end
  end
  local new = {}
  local j = 0
  for x in string.gmatch(ARGV[i + 1], '[^,]+') do j = j + 1; new[j] = old[j] + tonumber(x) end
  redis.call('HSET', KEYS[1], ARGV[i], table.concat(new, ','))
  if old[1] == 0 and new[1] > 0 then d[1] = d[1] + 1 end
  if old[2] == 0 and new[2] > 0 then d[2] = d[2] + 1 end
  for k = 1, 5 do d[2 + k] = d[2 + k] + new[k] - old[k] end
  d[8] = d[8] + new[2] * new[2] - old[2] * old[2]
  for k = 1, 3 do
    d[8 + k] = d[8 + k] + new[2 + k] * new[2 + k] - old[2 + k] * old[2 + k]
    d[11 + k] = d[11 + k] + new[2 + k] * new[2] - old[2 + k] * old[2]
  end
end
for k = 1, 14 do
  if d[k] ~= 0 then redis.call('HINCRBYFLOAT', KEYS[2], names[k], string.format('%.17g', d[k])) end
end
redis.call('HSETNX', KEYS[2], 'start', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
"""
MERGE_CHUNK = 200  # users per script call: a long script blocks Redis
DECISIONS_KEPT = 100  # promotion decisions kept (`{prefix}o:decisions`, newest first)


def _tag(group: str) -> str:
    return group.replace("{", "(").replace("}", ")")


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


class RedisLedger:
    """Redis ledger: shared by every process. Served lists are a small sorted set per user and bundle
    (score: serve time), written by one script call per answer and taken by one per event (atomic,
    so two processes never score the same list twice; every key of one call in the user's hash
    slot, so a Redis Cluster serves it too)."""

    shared = True

    def __init__(
        self,
        redis: Any,
        prefix: str,
        ttl_s: int,
        timeout: float,
        user_key: Any = None,
        horizon_s: float = 1.0,
        max_lists: int = 1000,
        totals_ttl_s: int = 14 * 86400,
        stats_timeout: float | None = None,
    ) -> None:
        self.redis, self.prefix, self.ttl_s, self.timeout = redis, prefix, ttl_s, timeout
        # The statistics reads (a window of up to a day of minutes, an experiment's sums, the
        # decisions) have no fallback answer and are off the hot path: they get the longer budget.
        self.stats_timeout = max(timeout, stats_timeout or timeout)
        self.horizon_s, self.max_lists, self.totals_ttl_s = horizon_s, max_lists, totals_ttl_s
        self._remember = REMEMBER.format(horizon=repr(float(horizon_s)), max_lists=int(max_lists), ttl=int(ttl_s))
        self._remember_sha = hashlib.sha1(self._remember.encode()).hexdigest()
        self._user = user_key or (lambda kind, user: f"{prefix}{kind}:{user}")

    def _list(self, user: str, bundle: str) -> str:
        return f"{self._user('sl', user)}:{bundle}"

    def _counts(self, minute: int) -> str:
        return f"{self.prefix}o:{minute}"

    def _hll(self, what: str, minute: int, group: str) -> str:
        # hash-tagged by group, so a window's union is one PFCOUNT on a cluster
        return f"{self.prefix}o:{what}:{{{_tag(group)}}}:{minute}"

    def _arm(self, scope: str, variant: str) -> tuple[str, str]:
        base = f"{self.prefix}o:u:{{{_tag(f'{scope}|{variant}')}}}"
        return base, f"{base}:sums"

    @staticmethod
    def _value(e: Served) -> str:
        # full precision: the time is compared, and makes the member unique
        return json.dumps([e.variant, list(e.items), e.at, e.scope], separators=(",", ":"))

    async def remember(self, batch: Sequence[tuple[str, Served]]) -> None:
        async with asyncio.timeout(self.timeout):
            try:
                await self._remember_batch(batch, by_sha=True)
            except NoScriptError:  # a Redis that has not seen the script yet (new, restarted, flushed)
                await self._remember_batch(batch, by_sha=False)  # EVAL caches it; repeating a write is a no-op

    async def _remember_batch(self, batch: Sequence[tuple[str, Served]], by_sha: bool) -> None:
        run, script = ("evalsha", self._remember_sha) if by_sha else ("eval", self._remember)
        if len(batch) == 1:  # the common case when not loaded: no pipeline object to build
            user, e = batch[0]
            await getattr(self.redis, run)(script, 1, self._list(user, e.bundle), repr(e.at), self._value(e))
            return
        pipe = self.redis.pipeline(transaction=False)
        for user, e in batch:
            getattr(pipe, run)(script, 1, self._list(user, e.bundle), repr(e.at), self._value(e))
        await pipe.execute()

    async def take(self, asks: Sequence[tuple[str, float]], bundles: Sequence[str]) -> list[list[Served]]:
        if not asks or not bundles:
            return [[] for _ in asks]
        pipe = self.redis.pipeline(transaction=False)
        for user, t in asks:
            keys = [self._list(user, b) for b in bundles]
            pipe.eval(TAKE, len(keys), *keys, repr(t), repr(t - self.ttl_s))
        async with asyncio.timeout(self.timeout):
            res = await pipe.execute()
        out: list[list[Served]] = []
        for raws in res:
            got = []
            for b, raw in zip(bundles, raws, strict=True):
                if raw:
                    variant, items, at, scope = json.loads(raw)
                    got.append(Served(b, variant, tuple(items), at, scope))
            out.append(got)
        return out

    async def add(self, counts: Counts, items: Items, users: Users, totals: Totals, now: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for minute, c in counts.items():
            key = self._counts(minute)
            for k, v in c.items():
                pipe.hincrbyfloat(key, k, v)
            pipe.expire(key, COUNTER_TTL_S)
        for what, sets in (("c", items), ("n", users)):
            for (minute, group), ids in sets.items():
                if ids:
                    hll = self._hll(what, minute, group)
                    pipe.pfadd(hll, *ids)
                    pipe.expire(hll, COUNTER_TTL_S)
        for (scope, variant), per_user in totals.items():
            keys = self._arm(scope, variant)
            rows = list(per_user.items())
            for i in range(0, len(rows), MERGE_CHUNK):
                args: list[Any] = [self.totals_ttl_s, repr(now)]
                for user, t in rows[i : i + MERGE_CHUNK]:
                    args += [user, ",".join(_num(x) for x in t)]
                pipe.eval(MERGE, 2, *keys, *args)
        async with asyncio.timeout(self.timeout):
            await pipe.execute()

    async def window(self, minutes: Sequence[int]) -> Window:
        pipe = self.redis.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(self._counts(m))
        async with asyncio.timeout(self.stats_timeout):
            buckets = await pipe.execute()
        total: dict[str, float] = defaultdict(float)
        for b in buckets:
            for k, v in b.items():
                total[k] += float(v)
        groups = sorted({k.rsplit("|", 1)[0] for k in total if k.endswith("|served") or k.endswith("|scored")})
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.pfcount(*[self._hll("c", m, g) for m in minutes])  # union over the window
            pipe.pfcount(*[self._hll("n", m, g) for m in minutes])
        async with asyncio.timeout(self.stats_timeout):
            distinct = await pipe.execute() if groups else []
        items = {g: int(distinct[2 * i]) for i, g in enumerate(groups)}
        users = {g: int(distinct[2 * i + 1]) for i, g in enumerate(groups)}
        return Window(dict(total), items, users)

    async def experiment(self, scope: str, variants: Sequence[str]) -> dict[str, dict[str, float]]:
        pipe = self.redis.pipeline(transaction=False)
        for v in variants:
            pipe.hgetall(self._arm(scope, v)[1])
        async with asyncio.timeout(self.stats_timeout):
            res = await pipe.execute()
        return {v: {k: float(x) for k, x in h.items()} for v, h in zip(variants, res, strict=True) if h}

    async def claim(self, name: str, ttl_s: float) -> bool:
        async with asyncio.timeout(self.timeout):
            return bool(await self.redis.set(f"{self.prefix}o:claim:{name}", "1", nx=True, px=int(ttl_s * 1000)))

    async def record(self, decision: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(f"{self.prefix}o:decisions", json.dumps(decision))
        pipe.ltrim(f"{self.prefix}o:decisions", 0, DECISIONS_KEPT - 1)
        async with asyncio.timeout(self.timeout):
            await pipe.execute()

    async def decisions(self, n: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(self.stats_timeout):
            raw = await self.redis.lrange(f"{self.prefix}o:decisions", 0, n - 1)
        return [json.loads(r) for r in raw]


def online_ledger(
    store: EventStore,
    prefix: str,
    ttl_s: int,
    timeout: float,
    horizon_s: float = 1.0,
    max_lists: int = 1000,
    totals_ttl_s: int = 14 * 86400,
    stats_timeout: float | None = None,
) -> Ledger:
    """The ledger next to `store`: in its Redis (on a cluster, each user's lists in the user's
    slot), else in process."""
    shared = store.shared_redis()
    if shared is not None:
        return RedisLedger(
            shared.redis, prefix, ttl_s, timeout, shared.user_key, horizon_s, max_lists, totals_ttl_s, stats_timeout
        )
    if store.kind != "memory":
        log.warning("online tracking kept in process: the %s store offers no shared client", store.kind)
    return MemoryLedger(ttl_s, horizon_s=horizon_s, max_lists=max_lists)
