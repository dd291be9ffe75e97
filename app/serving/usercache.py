"""Per-user model state: a read whose encoded history did not change skips the ONNX encoder.

An entry is keyed by the user and the bundle name. Three kinds, by what the bundle offers:

- a cached user vector, `digest || user_vec`: the digest is a BLAKE2b hash of the bundle's
  identity (name, version, checksums of its files) and of the model indices actually encoded
  (the last `max_len`); the vector is reused only when that digest equals the digest of what the
  read would encode now;
- a recurrent state (bundles whose manifest offers `incremental.kind = "rnn_state"`, GRU4Rec):
  `digest || n || state || user_vec`, the GRU state after the first `n` encoded items, with the
  digest of exactly those `n`. A read whose encoded window starts with those `n` items advances
  the state by the items after them in one step-graph call (O(1) per new event); any other
  window (a late event inserted before them, the history trimmed under them, another bundle)
  has another prefix digest and rebuilds the state from the window;
- a key/value cache (bundles whose manifest offers `incremental.kind = "kv_cache"`, HSTU):
  `digest || n || K || V [|| times] || user_vec`, every layer's keys and values of the first `n`
  encoded events (and their times, for a bundle that reads them), with the digest of exactly those
  events and times. A read whose window starts with them extends the cache by the events after
  them in one step-graph call; another window with at most max_len events rebuilds it from an
  empty cache, and a history longer than max_len (the window slid: every position moved) is
  encoded by model.onnx and kept as a cached vector, as for any other bundle.

In Redis, any of them may also hold the last plain list answered (`pack_entry`) with a check of
the history it was computed from (`state_check`), compared inside the read script: a read of an
unchanged history gets the list back (the list alone: not the vector, state or cache, nor the
history) without the encoder or the top-k.

A vector computed from another history, by another bundle version or by another
process is never served: any acknowledged write changes the history a read fetches, hence the
digest, hence forces a recompute (or an exact advance).

Where entries live and how they are read and written: app/stores/usercache.py.
- Items registered online (POST /items) get process-local indices, so a history holding one is
  not cached (its indices alone do not identify the items across processes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from app.bundles.manifest import IncrementalSpec, KvCacheSpec
from app.bundles.onnx import ort_session
from app.stores.base import EventStore
from app.stores.usercache import CacheBackend, EntryRead, cache_backend

if TYPE_CHECKING:
    import onnxruntime as ort

    from app.bundles.bundle import Bundle

log = logging.getLogger("seqrec.userstate")

DIGEST_BYTES = 16
_tags: weakref.WeakKeyDictionary[Bundle, bytes] = weakref.WeakKeyDictionary()
_steps: weakref.WeakKeyDictionary[Bundle, ort.InferenceSession] = weakref.WeakKeyDictionary()


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
    """The bundle's incremental step graph, when its manifest offers one (loaded once per bundle)."""
    spec = bundle.manifest.incremental
    if spec is None or bundle.history_transform is not None:
        return None  # (a history transform over times re-shapes the whole window: no prefix to advance)
    if spec.kind == "rnn_state" and bundle.needs_times:
        return None  # a recurrent step reads items only
    if spec.kind == "kv_cache" and spec.times != (bundle.time_input is not None):
        return None  # (the manifest's validation refuses this already)
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
    def shape(bundle: Bundle) -> tuple[int, int]:
        """(layers, H) of one user's state: only bundles with an incremental path have one."""
        spec = bundle.manifest.incremental
        assert spec is not None and not isinstance(spec, KvCacheSpec), "a recurrent state needs a recurrent step"
        layers, hid = spec.state_shape
        return layers, hid

    @staticmethod
    def size(bundle: Bundle) -> int:
        layers, hid = RnnState.shape(bundle)
        return DIGEST_BYTES + 4 + 4 * (layers * hid + bundle.dim)

    @classmethod
    def parse(cls, blob: bytes | None, bundle: Bundle) -> RnnState | None:
        """None when absent or not this bundle's layout (e.g. a plain cached vector). `blob` is the
        state alone (as entries were first written) or an entry (`pack_entry`) holding it."""
        layers, hid = cls.shape(bundle)
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


_CACHE_DTYPES: dict[str, type[np.floating]] = {"float32": np.float32, "float16": np.float16}


class KvCache:
    """One user's keys and values: every layer's, for the first `n` events of the encoded window
    (`digest` of them and, where the bundle reads times, of their times), and the user vector after them.

    k (layers, 1, n, Wk), v (layers, 1, n, Wv) in the manifest's cache dtype, times (n,) int64 or None."""

    __slots__ = ("digest", "k", "n", "raw", "times", "v", "vec")

    def __init__(
        self,
        digest: bytes,
        n: int,
        k: np.ndarray,
        v: np.ndarray,
        times: np.ndarray | None,
        vec: np.ndarray,
        raw: bytes | None = None,
    ) -> None:
        self.digest, self.n, self.k, self.v, self.times, self.vec = digest, n, k, v, times, vec
        self.raw = raw  # the stored bytes it was parsed from: a hit stores them again without packing

    def to_bytes(self) -> bytes:
        if self.raw is None:
            parts = [self.digest, np.uint32(self.n).tobytes(), self.k.tobytes(), self.v.tobytes()]
            if self.times is not None:
                parts.append(np.ascontiguousarray(self.times, np.int64).tobytes())
            self.raw = b"".join([*parts, np.ascontiguousarray(self.vec, np.float32).tobytes()])
        return self.raw

    @staticmethod
    def spec(bundle: Bundle) -> KvCacheSpec:
        spec = bundle.manifest.incremental
        assert isinstance(spec, KvCacheSpec), "a key/value cache needs a bundle with a kv_cache step"
        return spec

    @classmethod
    def size(cls, bundle: Bundle, n: int) -> int:
        """Bytes of an entry's model part covering n events."""
        spec = cls.spec(bundle)
        layers, wk, wv = spec.cache_shape
        per_event = layers * (wk + wv) * np.dtype(_CACHE_DTYPES[spec.cache_dtype]).itemsize + 8 * spec.times
        return DIGEST_BYTES + 4 + n * per_event + 4 * bundle.dim

    @classmethod
    def empty(cls, bundle: Bundle) -> KvCache:
        """The cache of no events: a step from it over a whole window encodes the window."""
        spec = cls.spec(bundle)
        layers, wk, wv = spec.cache_shape
        dtype = _CACHE_DTYPES[spec.cache_dtype]
        times = np.zeros(0, np.int64) if spec.times else None
        k, v = np.zeros((layers, 1, 0, wk), dtype), np.zeros((layers, 1, 0, wv), dtype)
        return cls(b"", 0, k, v, times, np.zeros((1, bundle.dim), np.float32))

    @classmethod
    def parse(cls, entry: bytes | None, bundle: Bundle) -> KvCache | None:
        """The cache an entry (`pack_entry`) holds; None when absent or not this bundle's layout (e.g.
        a cached vector, which a history longer than max_len leaves)."""

        def base_size(body: memoryview) -> int | None:
            if len(body) < DIGEST_BYTES + 4:
                return None
            n = int(np.frombuffer(body, np.uint32, 1, DIGEST_BYTES)[0])
            return cls.size(bundle, n) if n <= bundle.max_len else None

        got = unpack_entry(entry, base_size)
        if got is None:
            return None
        base = got[1]
        spec = cls.spec(bundle)
        layers, wk, wv = spec.cache_shape
        dtype = np.dtype(_CACHE_DTYPES[spec.cache_dtype])
        n = int(np.frombuffer(base, np.uint32, 1, DIGEST_BYTES)[0])
        at = DIGEST_BYTES + 4
        k = np.frombuffer(base, dtype, layers * n * wk, at).reshape(layers, 1, n, wk)
        at += k.nbytes
        v = np.frombuffer(base, dtype, layers * n * wv, at).reshape(layers, 1, n, wv)
        at += v.nbytes
        times = None
        if spec.times:
            times = np.frombuffer(base, np.int64, n, at)
            at += times.nbytes
        vec = np.frombuffer(base, np.float32, bundle.dim, at).reshape(1, bundle.dim)
        return cls(base[:DIGEST_BYTES], n, k, v, times, vec, base)


def _covers(bundle: Bundle, cache: KvCache, window: np.ndarray, times: np.ndarray | None) -> bool:
    """Whether `cache` holds the first cache.n events of `window` (and their times)."""
    n = cache.n
    return _digest(bundle, window[:n], None if times is None else times[:n]) == cache.digest


class Answer(NamedTuple):
    """A cached list: the best `len(labels)` items (seen ones excluded) of a history `n_seen` events long."""

    labels: np.ndarray  # (K,) int64 model indices, best first
    scores: np.ndarray  # (K,) float32
    n_seen: int


@dataclass(frozen=True, slots=True)
class Read:
    """What one cache read returned: the history, or only a cached answer that still holds."""

    history: list[str] | None  # the last n item ids; None when `answer` was read instead
    times: list[float] | None  # their times, when asked
    entry: bytes | None  # the stored entry, raw
    check: bytes = b""  # the state of the history read (answer-cached bundles), see `state_check`
    answer: Answer | None = None
    excluded: tuple[str, ...] = ()  # the user's exclusion set (negative feedback): items never to list


def _read(got: EntryRead, answer: Answer | None = None) -> Read:
    return Read(got.history, got.times, got.entry, got.check, answer, got.excluded)


class UserVector(NamedTuple):
    vec: np.ndarray  # (1, D)
    base: bytes | None  # the entry's model part, to store with the list (reads with a state check)


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


def unpack_entry(
    entry: bytes | None, size: int | Callable[[memoryview], int | None]
) -> tuple[bytes, bytes, Answer | None] | None:
    """(check, base, answer or None) of an entry whose base is `size` bytes (or as many as `size`
    says, given the bytes from the base on); None for anything else. Size 0 reads an entry whose
    base was left out (the read script returns a cached list so)."""
    if entry is None:
        return None
    end = entry.find(b"\0\0")
    stop = entry.find(b"\0", end + 2) if end >= 0 else -1
    if stop < 0 or not entry[end + 2 : stop].isdigit():
        return None
    k = int(entry[end + 2 : stop])
    at = stop + 1  # where the base starts
    base_size = size if isinstance(size, int) else size(memoryview(entry)[at:])
    if base_size is None or len(entry) - at != (base_size if k == 0 else base_size + 4 + 8 * k):
        return None
    answer = None
    if k:
        tail = at + base_size
        n_seen = int(np.frombuffer(entry, np.uint32, 1, tail)[0])
        labels = np.frombuffer(entry, np.int32, k, tail + 4).astype(np.int64)
        answer = Answer(labels, np.frombuffer(entry, np.float32, k, tail + 4 + 4 * k), n_seen)
    return entry[: end + 2] if end else b"", entry[at : at + base_size], answer


def unpack_vector(entry: bytes | None, dim: int) -> tuple[bytes, np.ndarray, Answer | None] | None:
    """(digest, (1, D) vector, answer or None) of a vector bundle's entry; None for anything else."""
    got = unpack_entry(entry, DIGEST_BYTES + 4 * dim)
    if got is None:
        return None
    base = got[1]
    return base[:DIGEST_BYTES], np.frombuffer(base, np.float32, dim, DIGEST_BYTES).reshape(1, dim), got[2]


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
        self.backend: CacheBackend = cache_backend(store, ttl_s, self.lookups.labels("write_error"))

    def answers(self, bundle: Bundle) -> bool:
        """Whether whole lists of this bundle may be cached: where the state check runs next to the
        history (Redis), with the exported catalogue as it is (an item registered online changes
        the lists, not the user vectors or states)."""
        return (
            self.enabled
            and self.lists
            and self.backend.checks_state
            and len(bundle.item_ids) == bundle.manifest.num_items
        )

    def _step(self, bundle: Bundle) -> ort.InferenceSession | None:
        return step_session(bundle) if self.rnn_state else None

    async def read(self, user_id: str, n: int, bundle: Bundle, k: int = 0) -> Read:
        """The user's history (StoreUnavailable as from the store), its times when the bundle reads
        them, and the cache entry, if any. k > 0 asks for a plain list of k items (seen items
        excluded, no re-ranking): then a cached list that still holds may come instead of the history."""
        if not self.enabled:
            got = await self.store.read(user_id, n, bundle.needs_times)
            return Read(got.items, got.times, None, excluded=tuple(got.excluded))
        tag = bundle_tag(bundle).hex().encode() if k and self.answers(bundle) else b""
        read = await self.backend.read(user_id, n, bundle.name, bundle.needs_times, tag, k)
        if read.history is not None:
            return _read(read)
        entry = unpack_entry(read.entry, 0)  # the list alone: the script leaves the vector or state out
        if entry is not None and entry[2] is not None and len(entry[2].labels) >= k:
            self.lookups.labels("list").inc()
            return _read(read, entry[2])
        # Only an entry this code did not write could pass the script's check and fail here: read all.
        return _read(await self.backend.read(user_id, n, bundle.name, bundle.needs_times))

    def user_vector(
        self, user_id: str, bundle: Bundle, seen: np.ndarray, read: Read, times: np.ndarray | None = None
    ) -> UserVector:
        """The (1, D) user vector of `seen` [with its times]: the entry's when its digest matches,
        else computed (or advanced) and stored, or, when the read has a state check, returned with
        the entry's model part for `remember` to store with the list."""
        digest = history_digest(bundle, seen, times) if self.enabled else None
        if digest is None:
            return UserVector(bundle.user_vectors([seen], None if times is None else [times]), None)
        step = self._step(bundle)
        if step is not None and bundle.manifest.incremental is not None:
            if bundle.manifest.incremental.kind == "kv_cache":
                return self._extend(user_id, bundle, step, seen, times, read, digest)
            return self._advance(user_id, bundle, step, seen[-bundle.max_len :], read)
        return self._vector(user_id, bundle, seen, times, read, digest)

    def _vector(
        self,
        user_id: str,
        bundle: Bundle,
        seen: np.ndarray,
        times: np.ndarray | None,
        read: Read,
        digest: bytes,
        computed: str = "miss",
    ) -> UserVector:
        """The cached vector when its digest matches, else model.onnx (counted as `computed`)."""
        got = unpack_vector(read.entry, bundle.dim)
        if got is not None and got[0] == digest:
            self.lookups.labels("hit").inc()
            vec = got[1]
        else:
            self.lookups.labels(computed).inc()
            vec = np.ascontiguousarray(bundle.user_vectors([seen], None if times is None else [times]), np.float32)
            if not read.check:
                self.backend.put(user_id, bundle.name, pack_entry(b"", vector_base(digest, vec), None))
        return UserVector(vec, vector_base(digest, vec) if read.check else None)

    def remember(
        self,
        user_id: str,
        bundle: Bundle,
        read: Read,
        user: UserVector,
        labels: np.ndarray,
        scores: np.ndarray,
        n_seen: int,
    ) -> None:
        """Store the list just computed for a read with a state check, next to its vector or state."""
        if user.base is None:
            return
        self.backend.put(user_id, bundle.name, pack_entry(read.check, user.base, Answer(labels, scores, n_seen)))

    def _advance(
        self, user_id: str, bundle: Bundle, step: ort.InferenceSession, window: np.ndarray, read: Read
    ) -> UserVector:
        """The recurrent path: the stored state if it covers a prefix of `window`, advanced by the rest."""
        spec = bundle.manifest.incremental
        assert isinstance(spec, IncrementalSpec)
        old = RnnState.parse(read.entry, bundle)
        if old is not None and old.n <= len(window) and _digest(bundle, window[: old.n]) == old.digest:
            if old.n == len(window):
                self.lookups.labels("hit").inc()
                # with a state check, the list is stored with the state as it is
                return UserVector(old.vec, old.to_bytes() if read.check else None)
            self.lookups.labels("advance").inc()
            state, rest = old.state, window[old.n :]
        else:
            self.lookups.labels("rebuild").inc()
            state, rest = np.zeros((spec.state_shape[0], 1, spec.state_shape[1]), np.float32), window
        # (layers, 1, H), (1, T) -> (layers, 1, H), (1, D): one call however many events arrived
        new_state, vec = step.run(spec.outputs, {spec.inputs[0]: state, spec.inputs[1]: rest[None, :]})
        base = RnnState(_digest(bundle, window), len(window), new_state, vec).to_bytes()
        if read.check:  # stored with the list, by `remember`
            return UserVector(vec, base)
        self.backend.put(user_id, bundle.name, pack_entry(b"", base, None))
        return UserVector(vec, None)

    def _extend(
        self,
        user_id: str,
        bundle: Bundle,
        step: ort.InferenceSession,
        seen: np.ndarray,
        times: np.ndarray | None,
        read: Read,
        digest: bytes,
    ) -> UserVector:
        """The key/value path: the stored cache if it covers a prefix of the window, extended by the
        rest; else rebuilt from an empty cache, or, past max_len, model.onnx (docs/results/hstu.md)."""
        spec = KvCache.spec(bundle)
        window = seen[-bundle.max_len :]
        wtimes = None
        if spec.times:
            assert times is not None  # a bundle that reads times is always given them
            wtimes = np.ascontiguousarray(times[-bundle.max_len :], np.int64)
        old = KvCache.parse(read.entry, bundle)
        if old is not None and old.n <= len(window) and _covers(bundle, old, window, wtimes):
            if old.n == len(window):
                self.lookups.labels("hit").inc()
                return UserVector(old.vec, old.to_bytes() if read.check else None)
            self.lookups.labels("advance").inc()
            cache = old
        elif len(seen) > bundle.max_len:
            # The window slid (n + m > max_len): every position moved, nothing cached holds. The
            # vector is kept as any bundle's, so an unchanged history is still a hit.
            return self._vector(user_id, bundle, seen, times, read, digest, "rebuild")
        else:
            self.lookups.labels("rebuild").inc()
            cache = KvCache.empty(bundle)
        # (layers, 1, n, W) + m new events -> (layers, 1, n + m, W), (1, D): one call for all of them
        new = window[cache.n :][None, :]
        feeds = {spec.inputs[0]: cache.k, spec.inputs[1]: cache.v}
        if wtimes is not None:
            assert cache.times is not None
            cached_times, new_times = cache.times[None, :], wtimes[None, cache.n :]
            feeds |= {spec.inputs[2]: cached_times, spec.inputs[3]: new, spec.inputs[4]: new_times}
        else:
            feeds[spec.inputs[2]] = new
        k, v, vec = step.run(spec.outputs, feeds)
        base = KvCache(_digest(bundle, window, wtimes), len(window), k, v, wtimes, vec).to_bytes()
        if read.check:  # stored with the list, by `remember`
            return UserVector(vec, base)
        self.backend.put(user_id, bundle.name, pack_entry(b"", base, None))
        return UserVector(vec, None)

    async def drain(self) -> None:
        """Wait for the cache writes in flight (tests; shutdown)."""
        await self.backend.drain()
