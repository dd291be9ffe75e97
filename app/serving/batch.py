"""Lists for many users at once (`seqrec recommend`): the pipeline's own steps, batched where it pays.

    cut      each history to the last `max_history` events, as the store keeps and the service reads it
    encode   item ids -> the bundle's indices (Bundle.encode_events: unknown items dropped)
    vectors  one ONNX call per group of histories of equal length: the padded rows a single request
             builds, so every user gets the vector GET /recommend computes
    rank     per user, `rank_model` / `rank_popular` of app/serving/recommend.py: the same exclusions,
             the same rules (a Catalog's mask) and the same popularity answer for an empty history

Nothing here reads files or writes Parquet (training/batch_recommend.py does, and spreads chunks over
processes); a chunk of histories goes in, its lists come out as columns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry

from app.bundles.served import load_bundle
from app.serving.catalog import NO_RULES, Catalog, Limits, Rules, Wanted
from app.serving.events import event_types
from app.serving.recommend import rank_model, rank_popular
from app.stores.catalog import MemoryCatalog
from app.stores.open import open_catalog, open_store

if TYPE_CHECKING:
    from pathlib import Path

    from app.bundles.bundle import Bundle
    from app.settings import Settings


def open_bundle(path: Path | str, ann_threshold: int = 20_000) -> Bundle:
    """The bundle as the service loads it (checked files, the same index choice)."""
    return load_bundle(path, ann_threshold)


async def service_rules(bundle: Bundle, settings: Settings, wanted: Wanted) -> tuple[Rules, Limits]:
    """The rules GET /recommend applies to a request stating `wanted`: the catalogue the settings'
    Redis holds (none without one: then a filter naming any attribute is refused), the deployment's
    named rules (SEQREC_RULES: `default`, or `wanted.rule`). FilterError / Refused as the service."""
    limits = Limits(settings.filter_overfetch_max, settings.filter_exact_max)
    if not settings.redis_url:
        catalog = Catalog(MemoryCatalog(), settings.rules, registry=CollectorRegistry(), limits=limits)
        return catalog.rules(bundle, wanted), limits
    store = open_store(settings)
    try:
        catalog = Catalog(open_catalog(settings, store), settings.rules, registry=CollectorRegistry(), limits=limits)
        await catalog.load()
        return catalog.rules(bundle, wanted), limits
    finally:
        await store.close()


def excludes_seen(settings: Settings) -> bool:
    """Whether the deployment keeps every seen item out of the lists (SEQREC_EXCLUDE_TYPES `*`)."""
    return event_types(settings).excludes_seen


@dataclass(frozen=True)
class PortableRules:
    """Rules as plain arrays, to hand to worker processes (Rules holds a closure)."""

    mask: np.ndarray | None
    exclude: np.ndarray

    @classmethod
    def of(cls, rules: Rules) -> PortableRules:
        return cls(None if rules.mask is None else np.asarray(rules.mask), rules.exclude)

    def rules(self) -> Rules:
        if self.mask is None:
            return Rules(exclude=self.exclude) if len(self.exclude) else NO_RULES
        mask = self.mask.copy()
        mask.flags.writeable = False
        kept = np.flatnonzero(mask)
        return Rules(mask=mask, eligible=len(kept), labels=lambda: kept, exclude=self.exclude)


@dataclass(frozen=True)
class History:
    """One user's events, oldest first (times: epoch seconds, needed by bundles that read them)."""

    user_id: str
    items: Sequence[str]
    times: Sequence[float] | None = None
    excluded: Sequence[str] = ()  # items never to list to this user (the store's exclusion set)


async def stored_histories(settings: Settings, users: Sequence[str], with_times: bool) -> list[History]:
    """The users' histories and exclusion sets, each read as GET /recommend reads it (the store's `read`),
    as many at once as the store's connection pool holds."""
    # A batch waits for a busy Redis rather than answering without the history (the service's timeout
    # is a request's budget); as many reads at once as a quarter of the connection pool.
    store = open_store(settings.model_copy(update={"redis_timeout": max(settings.redis_timeout, 10.0)}))
    out: list[History] = []
    try:
        step = max(1, settings.redis_pool_size // 4)
        for start in range(0, len(users), step):
            part = users[start : start + step]
            reads = await asyncio.gather(*(store.read(u, settings.max_history, with_times) for u in part))
            out += [History(u, r.items, r.times, r.excluded) for u, r in zip(part, reads, strict=True)]
    finally:
        await store.close()
    return out


@dataclass(frozen=True)
class Lists:
    """A chunk's lists as columns, one row per listed item (rank 1 = best)."""

    user_id: list[str]
    rank: np.ndarray  # int32
    item_id: list[str]
    score: np.ndarray  # float32
    users: int
    popularity: int  # users answered by popularity (no history the model knows)


class BatchLists:
    """What GET /recommend answers, for many histories: `lists(chunk)`."""

    def __init__(
        self,
        bundle: Bundle,
        k: int = 10,
        rules: Rules = NO_RULES,
        exclude_seen: bool = True,
        max_history: int = 200,
        limits: Limits = Limits(),
        batch_size: int = 256,
        threads: int = 1,
        excludes_seen: bool = True,
    ) -> None:
        if bundle.needs_types:
            raise ValueError(f"bundle {bundle.name} reads event types: batch lists do not pass them yet")
        self.bundle, self.k, self.rules = bundle, k, rules
        # Seen items leave the list when asked and SEQREC_EXCLUDE_TYPES is `*` (the service's rule).
        self.exclude_seen = exclude_seen and excludes_seen
        self.max_history, self.limits, self.batch_size, self.threads = max_history, limits, batch_size, threads
        # The same for every user without a history: computed once.
        self.popular = rank_popular(bundle, k, rules)

    def _encode(self, h: History) -> tuple[np.ndarray, np.ndarray | None]:
        n = self.max_history
        times = list(h.times[-n:]) if h.times is not None else None
        if self.bundle.needs_times and times is None:
            raise ValueError(f"bundle {self.bundle.name} reads event times: user {h.user_id!r} has none")
        return self.bundle.encode_events(list(h.items[-n:]), times)

    def vectors(self, seen: Sequence[np.ndarray], times: Sequence[np.ndarray | None]) -> dict[int, np.ndarray]:
        """User vectors (1, D) by position in `seen`, for the non-empty histories. Histories of one
        length share a batch, so each row is padded exactly as a request pads it alone."""
        bundle, cut = self.bundle, self.bundle.max_len
        groups: dict[int, list[int]] = {}
        for n, s in enumerate(seen):
            if len(s):  # a timed bundle's transform may change the length: group by what was read
                groups.setdefault(len(s) if bundle.needs_times else min(len(s), cut), []).append(n)
        out: dict[int, np.ndarray] = {}
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                part = members[start : start + self.batch_size]
                ts = [t for t in (times[n] for n in part) if t is not None] if bundle.needs_times else None
                vecs = bundle.user_vectors([seen[n] for n in part], ts, self.threads)
                for row, n in enumerate(part):
                    out[n] = vecs[row : row + 1]
        return out

    def lists(self, chunk: Sequence[History]) -> Lists:
        encoded = [self._encode(h) for h in chunk]
        seen = [e[0] for e in encoded]
        vecs = self.vectors(seen, [e[1] for e in encoded])
        users: list[str] = []
        labels: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        counts: list[int] = []
        popularity = 0
        for n, h in enumerate(chunk):
            vec = vecs.get(n)
            excluded = self.bundle.encode(h.excluded) if h.excluded else None
            if vec is None:
                popularity += 1
                lab, sc = self.popular
                if excluded is not None and len(excluded):  # the user's exclusion set narrows popularity too
                    rules = replace(self.rules, exclude=np.concatenate([self.rules.exclude, excluded]))
                    lab, sc = rank_popular(self.bundle, self.k, rules)
            else:
                away = seen[n] if self.exclude_seen else seen[n][:0]
                if excluded is not None and len(excluded):
                    away = np.concatenate([away, excluded])
                lab, sc, _ = rank_model(self.bundle, vec, self.k, away, len(away) > 0, self.rules, self.limits)
            users.append(h.user_id)
            labels.append(lab)
            scores.append(sc)
            counts.append(len(lab))
        flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        reps = np.asarray(counts, np.int64)
        starts = np.cumsum(reps) - reps
        rank = (np.arange(len(flat)) - np.repeat(starts, reps) + 1).astype(np.int32)
        return Lists(
            user_id=[u for u, c in zip(users, counts, strict=True) for _ in range(c)],
            rank=rank,
            item_id=self.bundle.external(flat),
            score=(np.concatenate(scores) if scores else np.zeros(0)).astype(np.float32),
            users=len(chunk),
            popularity=popularity,
        )
