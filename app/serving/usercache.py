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

Where entries live and how they are read and written: app/stores/usercache.py.
- Items registered online (POST /items) get process-local indices, so a history holding one is
  not cached (its indices alone do not identify the items across processes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from prometheus_client import CollectorRegistry, Counter

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
    def shape(bundle: Bundle) -> tuple[int, int]:
        """(layers, H) of one user's state: only bundles with an incremental path have one."""
        spec = bundle.manifest.incremental
        assert spec is not None, "a recurrent state needs a bundle with an incremental path"
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

    def _base_size(self, bundle: Bundle) -> int:
        return RnnState.size(bundle) if self._step(bundle) is not None else DIGEST_BYTES + 4 * bundle.dim

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
        entry = unpack_entry(read.entry, self._base_size(bundle))
        if entry is not None and entry[2] is not None and len(entry[2].labels) >= k:
            self.lookups.labels("list").inc()
            return _read(read, entry[2])
        # Only an entry this code did not write could pass the script's check and fail here: read all.
        return _read(await self.backend.read(user_id, n, bundle.name, bundle.needs_times))

    def user_vector(
        self, user_id: str, bundle: Bundle, seen: np.ndarray, read: Read, times: np.ndarray | None = None
    ) -> UserVector:
        """The (1, D) user vector of `seen` [with its times]: the entry's when its digest matches,
        else computed and stored, or, when the read has a state check, returned as the entry's
        model part for `remember` to store with the list."""
        tms = None if times is None else [times]
        digest = history_digest(bundle, seen, times) if self.enabled else None
        if digest is None:
            return UserVector(bundle.user_vectors([seen], tms), None)
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
        assert spec is not None
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

    async def drain(self) -> None:
        """Wait for the cache writes in flight (tests; shutdown)."""
        await self.backend.drain()
