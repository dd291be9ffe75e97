"""Per-user model state: a read whose encoded history did not change skips the ONNX encoder.

An entry is keyed by the user and the bundle name. Two kinds, by what the bundle offers:

- a cached user vector, `digest || user_vec`: the digest is a BLAKE2b hash of the bundle's
  identity (name, version, checksums of its files) and of the model indices actually encoded
  (the last `max_len`); the vector is reused only when that digest equals the digest of what the
  read would encode now;
- a recurrent state (bundles whose manifest offers `incremental.kind = "rnn_state"`, GRU4Rec):
  `digest || n || state || user_vec`, the GRU state after the first `n` encoded items, with the
  digest of exactly those `n`. A read whose encoded window starts with those `n` items advances
  the state by the items after them in one step-graph call (O(1) per new event); any other
  window (a late event inserted before them, the history trimmed under them, another bundle)
  has another prefix digest and rebuilds the state from the window.

Either way, in Redis, the entry may also hold the last plain list answered (`pack_entry`) with a
check of the history it was computed from (`state_check`), compared inside the read script: a
read of an unchanged history gets the list back without the history, the encoder or the top-k.

A vector computed from another history, by another bundle version or by another
process is never served: any acknowledged write changes the history a read fetches, hence the
digest, hence forces a recompute (or an exact advance).

- Redis: one string `{prefix}v:{user}:{bundle}` per user and bundle, next to the history
  `{prefix}h:{user}` (on a Redis Cluster with the same `{user}` hash tag, in the history's slot),
  read together with the history by one script call and written with `SET .. EX ttl_s`. In
  process (memory store): a bounded LRU dict.
- Written after the answer is computed, batched across the requests of one event-loop turn (one
  pipeline): a write that fails (Redis down, timeout) is counted and forgotten, never fails the
  request.
- Items registered online (POST /items) get process-local indices, so a history holding one is
  not cached (its indices alone do not identify the items across processes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from app.onnx_session import ort_session
from app.stores import ClusterStore, EventStore, RedisStore, StoreUnavailable
from app.stores.base import items_of, read_history

if TYPE_CHECKING:
    import onnxruntime as ort

    from app.bundle import Bundle

log = logging.getLogger("seqrec.userstate")

DIGEST_BYTES = 16
_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
_tags: weakref.WeakKeyDictionary[Bundle, bytes] = weakref.WeakKeyDictionary()
_steps: weakref.WeakKeyDictionary[Bundle, ort.InferenceSession] = weakref.WeakKeyDictionary()

# The history and the entry in one command: a pipeline of two costs redis-py about as much CPU
# again as the ZRANGE alone. pcall: an entry of the wrong type is a miss, never a failed read.
# ARGV = n, with_times (1: the members' scores too, flat), tag, k. With a tag (a bundle whose
# answers may be cached, see `state_check`), an entry whose check equals the history's state now
# and whose list holds at least k items is returned alone: {0, entry}, the 200 members unread.
# Otherwise {members, entry, card}.
READ_LUA = """
local entry = redis.pcall('GET', KEYS[2])
if type(entry) == 'table' then entry = false end
local n = tonumber(ARGV[1])
local card = redis.call('ZCARD', KEYS[1])
if entry and ARGV[3] ~= '' and card > 0 then
  local first = redis.call('ZRANGE', KEYS[1], math.max(card - n, 0), math.max(card - n, 0))[1]
  local last = redis.call('ZRANGE', KEYS[1], -1, -1)[1]
  local check = ARGV[3] .. '\\0' .. card .. '\\0' .. first .. '\\0' .. last .. '\\0\\0'
  if string.sub(entry, 1, #check) == check then
    local stop = string.find(entry, '\\0', #check + 1, true)
    if stop and (tonumber(string.sub(entry, #check + 1, stop - 1)) or 0) >= tonumber(ARGV[4]) then
      return {0, entry}
    end
  end
end
local h
if ARGV[2] == '1' then
  h = redis.call('ZRANGE', KEYS[1], -n, -1, 'WITHSCORES')
else
  h = redis.call('ZRANGE', KEYS[1], -n, -1)
end
return {h, entry, card}
"""
READ_SHA = hashlib.sha1(READ_LUA.encode()).hexdigest()


def bundle_tag(bundle: Bundle) -> bytes:
    """What identifies the encoder: a reloaded or retrained bundle (same name) gets another tag."""
    tag = _tags.get(bundle)
    if tag is None:
        ident = {
            "name": bundle.name,
            "version": bundle.version,
            "max_len": bundle.max_len,
            "files": bundle.manifest.files,
        }
        tag = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).digest()
        _tags[bundle] = tag
    return tag


def _digest(bundle: Bundle, seq: np.ndarray, times: np.ndarray | None = None) -> bytes:
    h = hashlib.blake2b(bundle_tag(bundle), digest_size=DIGEST_BYTES)
    h.update(np.ascontiguousarray(seq, dtype=np.int64).tobytes())
    if times is not None:
        h.update(np.ascontiguousarray(times, dtype=np.int64).tobytes())
    return h.digest()


def history_digest(bundle: Bundle, seen: np.ndarray, times: np.ndarray | None = None) -> bytes | None:
    """Digest of what `bundle.user_vectors([seen], [times])` encodes; None when it must not be cached.

    For a bundle that reads event times, the digest covers the whole history and its times (a
    history transform may read every event), not only the last max_len indices.
    """
    if bundle.needs_times:
        if times is None:
            return None
        seq = seen
    else:
        seq, times = seen[-bundle.max_len :], None
    if len(seq) and int(seq.max()) > bundle.manifest.num_items:
        return None  # an online-registered item: its index is this process's, see the module doc
    return _digest(bundle, seq, times)


def step_session(bundle: Bundle) -> ort.InferenceSession | None:
    """The bundle's recurrent step graph, when its manifest offers one (loaded once per bundle)."""
    spec = bundle.manifest.incremental
    if spec is None or spec.kind != "rnn_state" or bundle.needs_times:
        return None  # (a history transform over times re-shapes the whole window: no prefix to advance)
    sess = _steps.get(bundle)
    if sess is None:
        sess = ort_session(bundle.path / spec.file)
        _steps[bundle] = sess
    return sess


class RnnState:
    """One user's recurrent state: after the first `n` items of the encoded window (`digest` of them)."""

    __slots__ = ("digest", "n", "state", "vec")

    def __init__(self, digest: bytes, n: int, state: np.ndarray, vec: np.ndarray) -> None:
        self.digest, self.n, self.state, self.vec = digest, n, state, vec

    def to_bytes(self) -> bytes:
        return self.digest + np.uint32(self.n).tobytes() + self.state.tobytes() + self.vec.tobytes()

    @staticmethod
    def size(bundle: Bundle) -> int:
        layers, hid = bundle.manifest.incremental.state_shape  # type: ignore[union-attr]
        return DIGEST_BYTES + 4 + 4 * (layers * hid + bundle.dim)

    @classmethod
    def parse(cls, blob: bytes | None, bundle: Bundle) -> RnnState | None:
        """None when absent or not this bundle's layout (e.g. a plain cached vector). `blob` is the
        state alone (as entries were first written) or an entry (`pack_entry`) holding it."""
        layers, hid = bundle.manifest.incremental.state_shape  # type: ignore[union-attr]
        size = cls.size(bundle)
        if blob is not None and len(blob) != size:
            got = unpack_entry(blob, size)
            blob = None if got is None else got[1]
        if blob is None:
            return None
        n = int(np.frombuffer(blob, np.uint32, 1, DIGEST_BYTES)[0])
        state = np.frombuffer(blob, np.float32, layers * hid, DIGEST_BYTES + 4).reshape(layers, 1, hid)
        vec = np.frombuffer(blob, np.float32, bundle.dim, DIGEST_BYTES + 4 + 4 * layers * hid).reshape(1, bundle.dim)
        return cls(blob[:DIGEST_BYTES], n, state, vec)


class Answer(NamedTuple):
    """A cached list: the best `len(labels)` items (seen ones excluded) of a history `n_seen` events long."""

    labels: np.ndarray  # (K,) int64 model indices, best first
    scores: np.ndarray  # (K,) float32
    n_seen: int


@dataclass(slots=True)
class Read:
    """What one cache read returned: the history, or only a cached answer that still holds."""

    history: list[str] | None  # the last n item ids; None when `answer` was read instead
    times: list[float] | None  # their times, when asked
    entry: bytes | None  # the stored entry, raw
    check: bytes = b""  # the state of the history read (answer-cached bundles), see `state_check`
    answer: Answer | None = None
    base: bytes | None = None  # the entry's model part just computed, to store with the answer


def state_check(tag: bytes, card: int, first: bytes, last: bytes) -> bytes:
    """What identifies the history a read sees (the read script computes the same bytes): the bundle,
    the number of stored events, the first member of the read window and the newest member.

    Why that suffices: a write only adds members (ZADD NX), then trims the oldest to the limit; an
    added member that stays raises the count or, at the limit, pushes the window's first member out
    for good (first members only get newer), so any change to the window changes this check; an
    expired or deleted history has count 0 (never cached). Ids hold no NUL, so the fields are
    unambiguous, and the stored check ends with two NULs, which no check contains."""
    return tag + b"\0" + str(card).encode() + b"\0" + first + b"\0" + last + b"\0\0"


def vector_base(digest: bytes, vec: np.ndarray) -> bytes:
    """The model part of a vector bundle's entry: the digest of the encoded history, the vector."""
    return digest + np.ascontiguousarray(vec, np.float32).tobytes()


def pack_entry(check: bytes, base: bytes, answer: Answer | None) -> bytes:
    """check (b"" when answers are not cached) | K as digits, NUL | base | n_seen | labels | scores.

    base: what answers the next read without the list: `vector_base` (digest, vector) or a
    recurrent state (`RnnState.to_bytes`), a fixed size per bundle."""
    k = 0 if answer is None else len(answer.labels)
    parts = [check or b"\0\0", str(k).encode(), b"\0", base]
    if answer is not None:
        parts += [
            np.uint32(answer.n_seen).tobytes(),
            answer.labels.astype(np.int32).tobytes(),
            answer.scores.astype(np.float32).tobytes(),
        ]
    return b"".join(parts)


def unpack_entry(entry: bytes | None, size: int) -> tuple[bytes, bytes, Answer | None] | None:
    """(check, base, answer or None) of an entry whose base is `size` bytes; None for anything else."""
    if entry is None:
        return None
    head, sep, rest = entry.partition(b"\0\0")
    k_digits, sep2, body = rest.partition(b"\0")
    if not sep or not sep2 or not k_digits.isdigit():
        return None
    k = int(k_digits)
    if len(body) != (size if k == 0 else size + 4 + 8 * k):
        return None
    answer = None
    if k:
        n_seen = int(np.frombuffer(body, np.uint32, 1, size)[0])
        labels = np.frombuffer(body, np.int32, k, size + 4).astype(np.int64)
        answer = Answer(labels, np.frombuffer(body, np.float32, k, size + 4 + 4 * k), n_seen)
    return (head + b"\0\0" if head else b""), body[:size], answer


def unpack_vector(entry: bytes | None, dim: int) -> tuple[bytes, np.ndarray, Answer | None] | None:
    """(digest, (1, D) vector, answer or None) of a vector bundle's entry; None for anything else."""
    got = unpack_entry(entry, DIGEST_BYTES + 4 * dim)
    if got is None:
        return None
    base = got[1]
    return base[:DIGEST_BYTES], np.frombuffer(base, np.float32, dim, DIGEST_BYTES).reshape(1, dim), got[2]


class CacheBackend(Protocol):
    async def read(
        self, user_id: str, n: int, field: str, with_times: bool = False, tag: bytes = b"", k: int = 0
    ) -> Read:
        """The user's last n item ids (raises StoreUnavailable like `EventStore.history`), their
        times when `with_times`, and the entry; with a `tag`, possibly only an entry whose cached
        answer (at least k items) holds for the history as it is now, and else the check."""
        ...

    def put(self, user_id: str, field: str, blob: bytes) -> None:
        """Store the entry soon (never raises; a lost write is a later miss)."""
        ...

    async def drain(self) -> None: ...


class RedisBackend:
    """History and entry in one script call; the entry's failure alone is only a miss.

    Single Redis: the entry is `{prefix}v:{user}:{bundle}` next to `{prefix}h:{user}`. Redis
    Cluster: `{prefix}v:{{user}}:{bundle}`, in the history's slot, so the script's two keys are
    on one master.
    """

    def __init__(self, store: RedisStore | ClusterStore, ttl_s: int, errors: Counter) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.errors = errors
        self._pending: dict[str, tuple[str, bytes]] = {}  # entry key -> (user, blob); newest wins
        self._flushing: set[asyncio.Task[None]] = set()
        self._reads: list[tuple[tuple[str, str], tuple[int, int, bytes, int], asyncio.Future[list]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # the batches of reads in flight

    def key(self, user_id: str, field: str) -> str:
        if isinstance(self.store, ClusterStore):
            return f"{self.store.user_key('v', user_id)}:{field}"
        return f"{self.store.prefix}v:{user_id}:{field}"

    async def _client(self, user_id: str) -> Redis:
        if isinstance(self.store, ClusterStore):
            await self.store._topology()  # the store's own slot map: the master that holds this user
            return self.store._client(self.store._master(user_id), raw=True)
        return self.store.raw

    async def _write_client(self, user_id: str) -> Redis:
        return await self._client(user_id)  # one seam: tests point the writes at a refusing Redis

    async def read(
        self, user_id: str, n: int, field: str, with_times: bool = False, tag: bytes = b"", k: int = 0
    ) -> Read:
        keys = (self.store.key(user_id), self.key(user_id, field))
        args = (n, 1 if with_times else 0, tag, k)
        try:
            async with asyncio.timeout(self.store.read_timeout):
                if isinstance(self.store, ClusterStore):  # one master per user: no shared batch
                    reply = await self._script(await self._client(user_id), keys, args)
                else:
                    reply = await self._batched(keys, args)
        except _ERRORS as exc:
            if isinstance(self.store, ClusterStore):
                self.store._stale = True  # as the store's own read does: reload the map next time
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if not isinstance(reply[0], list):  # {0, entry}: the cached answer holds
            return Read(None, None, reply[1])
        members, blob, card = reply
        entry = blob if isinstance(blob, bytes) else None
        raw = members[0::2] if with_times else members
        check = state_check(tag, int(card), raw[0], raw[-1]) if tag and raw else b""
        if with_times:  # a flat member, score, member, score, ... list from the script
            return Read(items_of(raw), [float(t) for t in members[1::2]], entry, check)
        return Read(items_of(raw), None, entry, check)

    @staticmethod
    async def _script(client: Redis, keys: tuple[str, str], args: tuple[int, int, bytes, int]) -> list:
        try:
            return await client.evalsha(READ_SHA, 2, *keys, *args)
        except NoScriptError:  # a restarted or new Redis: EVAL also caches the script
            return await client.eval(READ_LUA, 2, *keys, *args)

    def _batched(self, keys: tuple[str, str], args: tuple[int, int, bytes, int]) -> asyncio.Future[list]:
        """This read, sent with every other read issued in the same event-loop turn as one pipeline.

        Under load several requests reach this point per turn; one round trip instead of one each
        is most of the Redis client's CPU (a socket write and a wake-up of Redis per command). The
        read is still issued after its request arrived, so it sees every acknowledged write."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list] = loop.create_future()
        self._reads.append((keys, args, fut))
        if len(self._reads) == 1:  # the first read of this turn sends the batch on the next one
            task = loop.create_task(self._send_reads())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return fut

    async def _send_reads(self) -> None:
        batch, self._reads = self._reads, []
        try:
            async with asyncio.timeout(self.store.read_timeout):
                if len(batch) == 1:
                    keys, args, fut = batch[0]
                    results: list = [await self._script(self.store.raw, keys, args)]
                else:
                    pipe = self.store.raw.pipeline(transaction=False)
                    for keys, args, _ in batch:
                        pipe.evalsha(READ_SHA, 2, *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
                    for i, got in enumerate(results):
                        if isinstance(got, NoScriptError):  # Redis restarted: load the script, once
                            keys, args, _ = batch[i]
                            results[i] = await self._script(self.store.raw, keys, args)
        except BaseException as exc:  # every waiting read fails as its own read would
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable("read cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), got in zip(batch, results, strict=True):
            if fut.done():  # its request gave up (timeout) meanwhile
                continue
            if isinstance(got, Exception):
                fut.set_exception(got)
            else:
                fut.set_result(got)

    def put(self, user_id: str, field: str, blob: bytes) -> None:
        first = not self._pending
        self._pending[self.key(user_id, field)] = (user_id, blob)
        if first:  # one flush per event-loop turn carries every entry computed in it
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other requests of this turn add theirs
        pending, self._pending = self._pending, {}
        groups: dict[int, tuple[Redis, list[tuple[str, bytes]]]] = {}
        try:
            for key, (user, blob) in pending.items():
                client = await self._write_client(user)
                groups.setdefault(id(client), (client, []))[1].append((key, blob))
            for client, entries in groups.values():
                pipe = client.pipeline(transaction=False)
                for key, blob in entries:
                    pipe.set(key, blob, ex=self.ttl_s)
                async with asyncio.timeout(self.store.read_timeout):
                    await pipe.execute(raise_on_error=True)
        except _ERRORS as exc:  # the answers are already computed: a lost entry is just a later miss
            self.errors.inc(len(pending))
            log.debug("user state write failed: %r", exc)

    async def drain(self) -> None:
        while self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)


class MemoryBackend:
    """In process, next to the MemoryStore: bounded (LRU) and expiring like the Redis entries."""

    def __init__(self, store: EventStore, ttl_s: float, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()

    async def read(
        self, user_id: str, n: int, field: str, with_times: bool = False, tag: bytes = b"", k: int = 0
    ) -> Read:
        """Always the history (in process, reading it is cheap): answers are not cached here."""
        history, times = await read_history(self.store, user_id, n, with_times)
        hit = self._entries.get((user_id, field))
        if hit is None or time.monotonic() - hit[0] >= self.ttl_s:
            return Read(history, times, None)
        return Read(history, times, hit[1])

    def put(self, user_id: str, field: str, blob: bytes) -> None:
        key = (user_id, field)
        self._entries[key] = (time.monotonic(), blob)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def drain(self) -> None:
        return None


class UserCache:
    """The read path's user vectors: cached (or advanced) when enabled, recomputed whenever the digest differs."""

    def __init__(
        self,
        store: EventStore,
        enabled: bool,
        ttl_s: int,
        registry: CollectorRegistry,
        rnn_state: bool = True,
        lists: bool = True,
    ) -> None:
        self.store = store
        self.enabled = enabled
        self.rnn_state = rnn_state
        self.lists = lists
        self.lookups = Counter(
            "seqrec_user_cache_total", "User-vector cache lookups by outcome", ["outcome"], registry=registry
        )
        self.backend: CacheBackend = (
            RedisBackend(store, ttl_s, self.lookups.labels("write_error"))
            if isinstance(store, RedisStore | ClusterStore)
            else MemoryBackend(store, ttl_s)
        )

    def answers(self, bundle: Bundle) -> bool:
        """Whether whole lists of this bundle may be cached: in Redis (the state check runs there),
        with the exported catalogue as it is (an item registered online changes the lists, not the
        user vectors or states)."""
        return (
            self.enabled
            and self.lists
            and isinstance(self.backend, RedisBackend)
            and len(bundle.item_ids) == bundle.manifest.num_items
        )

    def _step(self, bundle: Bundle) -> ort.InferenceSession | None:
        return step_session(bundle) if self.rnn_state else None

    def _base_size(self, bundle: Bundle) -> int:
        return RnnState.size(bundle) if self._step(bundle) is not None else DIGEST_BYTES + 4 * bundle.dim

    async def read(self, user_id: str, n: int, bundle: Bundle, k: int = 0) -> Read:
        """The user's history (StoreUnavailable as from the store), its times when the bundle reads
        them, and the cache entry, if any. k > 0 asks for a plain list of k items (seen items
        excluded, no re-ranking): then a cached list that still holds may come instead of the history."""
        if not self.enabled:
            return Read(*await read_history(self.store, user_id, n, bundle.needs_times), None)
        tag = bundle_tag(bundle).hex().encode() if k and self.answers(bundle) else b""
        read = await self.backend.read(user_id, n, bundle.name, bundle.needs_times, tag, k)
        if read.history is not None:
            return read
        got = unpack_entry(read.entry, self._base_size(bundle))
        if got is not None and got[2] is not None and len(got[2].labels) >= k:
            self.lookups.labels("list").inc()
            read.answer = got[2]
            return read
        # Only an entry this code did not write could pass the script's check and fail here: read all.
        return await self.backend.read(user_id, n, bundle.name, bundle.needs_times)

    def user_vector(
        self, user_id: str, bundle: Bundle, seen: np.ndarray, read: Read, times: np.ndarray | None = None
    ) -> np.ndarray:
        """(1, D) user vector of `seen` [with its times]: the entry's when its digest matches, else
        computed (and stored; with the list, by `remember`, when the read has a state check)."""
        tms = None if times is None else [times]
        digest = history_digest(bundle, seen, times) if self.enabled else None
        if digest is None:
            return bundle.user_vectors([seen], tms)
        step = self._step(bundle)
        if step is not None:
            return self._advance(user_id, bundle, step, seen[-bundle.max_len :], read)
        got = unpack_vector(read.entry, bundle.dim)
        if got is not None and got[0] == digest:
            self.lookups.labels("hit").inc()
            vec = got[1]
        else:
            self.lookups.labels("miss").inc()
            vec = np.ascontiguousarray(bundle.user_vectors([seen], tms), dtype=np.float32)
            if not read.check:
                self.backend.put(user_id, bundle.name, pack_entry(b"", vector_base(digest, vec), None))
        if read.check:
            read.base = vector_base(digest, vec)
        return vec

    def remember(
        self, user_id: str, bundle: Bundle, read: Read, labels: np.ndarray, scores: np.ndarray, n_seen: int
    ) -> None:
        """Store the list just computed for a read with a state check, next to its vector or state."""
        if read.base is None:
            return
        self.backend.put(user_id, bundle.name, pack_entry(read.check, read.base, Answer(labels, scores, n_seen)))

    def _advance(
        self, user_id: str, bundle: Bundle, step: ort.InferenceSession, window: np.ndarray, read: Read
    ) -> np.ndarray:
        """The recurrent path: the stored state if it covers a prefix of `window`, advanced by the rest."""
        spec = bundle.manifest.incremental
        assert spec is not None
        old = RnnState.parse(read.entry, bundle)
        if old is not None and old.n <= len(window) and _digest(bundle, window[: old.n]) == old.digest:
            if old.n == len(window):
                self.lookups.labels("hit").inc()
                if read.check:  # the list is stored with the state as it is
                    read.base = old.to_bytes()
                return old.vec
            self.lookups.labels("advance").inc()
            state, rest = old.state, window[old.n :]
        else:
            self.lookups.labels("rebuild").inc()
            state, rest = np.zeros((spec.state_shape[0], 1, spec.state_shape[1]), np.float32), window
        # (layers, 1, H), (1, T) -> (layers, 1, H), (1, D): one call however many events arrived
        new_state, vec = step.run(spec.outputs, {spec.inputs[0]: state, spec.inputs[1]: rest[None, :]})
        base = RnnState(_digest(bundle, window), len(window), new_state, vec).to_bytes()
        if read.check:  # stored with the list, by `remember`
            read.base = base
        else:
            self.backend.put(user_id, bundle.name, pack_entry(b"", base, None))
        return vec

    async def drain(self) -> None:
        """Wait for the cache writes in flight (tests; shutdown)."""
        await self.backend.drain()
