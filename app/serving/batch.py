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
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry

from app.bundles.index import ExactIndex
from app.bundles.loader import load_bundle
from app.serving.catalog import NO_RULES, Catalog, Limits, Rules, Wanted
from app.serving.events import EventTypes, event_types
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


def event_roles(settings: Settings | None) -> EventTypes:
    """What each event type means to the store (history or not, excluding or not), as the service's
    settings say (SEQREC_EVENT_TYPES and its companions); None: the service's defaults."""
    if settings is None:
        from app.settings import Settings

        settings = Settings.model_construct()  # the fields' defaults, without a bundle to name
    return event_types(settings)


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
    """A chunk's lists as flat columns: user n's items are the next `counts[n]` labels (model indices,
    best first, rank 1 = best) and scores; the writer maps labels to item ids (`Bundle.item_ids`)."""

    user_id: list[str]  # one per user, in the chunk's order
    counts: np.ndarray  # int64 (users,): items listed per user
    labels: np.ndarray  # int64 (rows,): model indices, 1..N
    score: np.ndarray  # float32 (rows,)
    users: int
    popularity: int  # users answered by popularity (no history the model knows)

    @property
    def rows(self) -> int:
        return len(self.labels)


# Rows of the score matrix ranked at once: a 512 x N float32 block stays in the cache at N in the thousands.
BLOCK = 512
# How far a score of a block may be from the one GET /recommend computes, per unit of |user vector| x
# the largest |item vector|: a batch's encoder rows and a block's matrix product sum in another order
# than a lone request's (measured on ML-1M: at most 4.5e-7, a few float32 steps); twice that as margin.
MARGIN = 1e-6


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
        batch_size: int = 32,
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
        # Ranked a block of users at a time (one matrix product) where GET /recommend's top-k is one
        # exact search over every item: an exact index and no catalogue mask.
        index = bundle.index
        self.exact = isinstance(index, ExactIndex) and index.first == 1 and rules.mask is None
        if self.exact:
            assert isinstance(index, ExactIndex)
            self.longest = float(np.linalg.norm(index.table, axis=1).max()) if len(index) else 0.0

    def _encode(self, h: History) -> tuple[np.ndarray, np.ndarray | None]:
        n = self.max_history
        if not self.bundle.needs_times:  # Bundle.encode's result (unknown ids dropped), without a list per user
            items = h.items[-n:]
            idx = np.fromiter(map(self.bundle.index_of.get, items, repeat(0)), np.int64, len(items))
            return idx[idx > 0], None
        times = list(h.times[-n:]) if h.times is not None else None
        if times is None:
            raise ValueError(f"bundle {self.bundle.name} reads event times: user {h.user_id!r} has none")
        return self.bundle.encode_events(list(h.items[-n:]), times)

    def vectors(self, seen: Sequence[np.ndarray], times: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `seen` of the non-empty histories, their user vectors (m, D) in that order).
        Histories of one length share a batch, so each row is padded exactly as a request pads it alone."""
        bundle, cut = self.bundle, self.bundle.max_len
        groups: dict[int, list[int]] = {}
        for n, s in enumerate(seen):
            if len(s):  # a timed bundle's transform may change the length: group by what was read
                groups.setdefault(len(s) if bundle.needs_times else min(len(s), cut), []).append(n)
        order: list[int] = []
        parts: list[np.ndarray] = []
        for length, members in groups.items():
            # batch_size rows of the longest histories per call, more of shorter ones (the same positions):
            # small enough that the attention of a call stays in the cache (256 rows of 200 were 13% slower).
            rows = max(self.batch_size, self.batch_size * cut // max(length, 1))
            for start in range(0, len(members), rows):
                part = members[start : start + rows]
                ts = [t for t in (times[n] for n in part) if t is not None] if bundle.needs_times else None
                parts.append(bundle.user_vectors([seen[n] for n in part], ts, self.threads))
                order += part
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, bundle.dim), np.float32)
        return np.asarray(order, np.int64), np.concatenate(parts)

    def lists(self, chunk: Sequence[History]) -> Lists:
        bundle = self.bundle
        encoded = [self._encode(h) for h in chunk]
        seen = [e[0] for e in encoded]
        excluded = [bundle.encode(h.excluded) if len(h.excluded) else None for h in chunk]
        rows, vecs = self.vectors(seen, [e[1] for e in encoded])
        # What each user's list leaves out: the seen items (when excluded) and the exclusion set.
        away: list[np.ndarray] = []
        for n in rows.tolist():
            a = seen[n] if self.exclude_seen else seen[n][:0]
            ex = excluded[n]
            away.append(np.concatenate([a, ex]) if ex is not None and len(ex) else a)
        labels: list[np.ndarray | None] = [None] * len(chunk)
        scores: list[np.ndarray | None] = [None] * len(chunk)
        if self.exact:
            for row, ranked in enumerate(self._rank_exact(vecs, away)):
                n = int(rows[row])
                if ranked is None:  # too close to call from the block: exactly as a lone request
                    times = encoded[n][1]
                    vec = bundle.user_vectors([seen[n]], None if times is None else [times])
                    ranked = self._rank_one(vec, away[row])
                labels[n], scores[n] = ranked
        else:
            for row, n in enumerate(rows.tolist()):
                labels[n], scores[n] = self._rank_one(vecs[row : row + 1], away[row])
        popularity = 0
        for n, ex in enumerate(excluded):
            if labels[n] is not None:
                continue
            popularity += 1
            if ex is not None and len(ex):  # the user's exclusion set narrows popularity too
                rules = replace(self.rules, exclude=np.concatenate([self.rules.exclude, ex]))
                labels[n], scores[n] = rank_popular(bundle, self.k, rules)
            else:
                labels[n], scores[n] = self.popular
        done_l = [a for a in labels if a is not None]
        done_s = [a for a in scores if a is not None]
        return Lists(
            user_id=[h.user_id for h in chunk],
            counts=np.fromiter((len(a) for a in done_l), np.int64, len(done_l)),
            labels=np.concatenate(done_l).astype(np.int64) if done_l else np.zeros(0, np.int64),
            score=np.concatenate(done_s).astype(np.float32) if done_s else np.zeros(0, np.float32),
            users=len(chunk),
            popularity=popularity,
        )

    def _rank_one(self, vec: np.ndarray, away: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GET /recommend's own top-k for one user vector (1, D)."""
        labels, scores, _ = rank_model(self.bundle, vec, self.k, away, len(away) > 0, self.rules, self.limits)
        return labels, scores

    def _rank_exact(self, vecs: np.ndarray, away: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """The top k of each user vector over every item, `away[row]` and the rules' ids left out, a
        block of users per matrix product; None for a row the block cannot call: two of its k + 1
        best scores within 2 x MARGIN x |q| x max|t| of each other (a near tie, which the service's
        own rounding could order the other way), or fewer than k + 1 candidates."""
        index = self.bundle.index
        assert isinstance(index, ExactIndex)
        table = index.table
        n_items = len(table)
        k, kk = self.k, self.k + 1
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(vecs)
        if kk > n_items:
            return out
        margin = 2 * MARGIN * self.longest * np.linalg.norm(vecs, axis=1)  # (m,)
        always = self.rules.exclude - 1
        always = always[(always >= 0) & (always < n_items)]
        for lo in range(0, len(vecs), BLOCK):
            q = np.asarray(vecs[lo : lo + BLOCK], np.float32)
            s = q @ table.T  # (b, N): label = column + 1
            drop = away[lo : lo + len(q)]
            sizes = np.fromiter((len(a) for a in drop), np.int64, len(drop))
            if sizes.sum():
                cols = np.concatenate(drop) - 1
                rr = np.repeat(np.arange(len(q)), sizes)
                ok = (cols >= 0) & (cols < n_items)
                s[rr[ok], cols[ok]] = -np.inf
            if len(always):
                s[:, always] = -np.inf
            part = np.argpartition(s, n_items - kk, axis=1)[:, n_items - kk :]  # the k + 1 best, any order
            vals = np.take_along_axis(s, part, 1)
            order = np.argsort(-vals, axis=1, kind="stable")
            part, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
            with np.errstate(invalid="ignore"):  # -inf - -inf: a row short of candidates, not called
                apart = (vals[:, :-1] - vals[:, 1:] > margin[lo : lo + len(q), None]).all(1)
            for row in np.flatnonzero(apart & np.isfinite(vals[:, k])).tolist():
                out[lo + row] = (part[row, :k] + 1, vals[row, :k])
        return out
