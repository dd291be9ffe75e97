"""The recommend pipeline: a user id in, a list out, as one function of named steps.

    bundle   which bundle answers: `?model=`, else the user's A/B variant, else the default
    rules    the request's filter, the deployment's rules, availability and exclusions, as a mask
             over the bundle's items (app/serving/catalog.py); refused (422) before anything is read
    read     the user's history, or the sequence an anonymous request sent (and times, for a
             bundle that reads them), through the per-user cache when it is on: a plain list may
             come from it while the history it was computed from is still the stored one (the
             user's unfiltered candidates, `candidates_depth` deep, filtered by the request's rules
             now: when k survive, their top k is the answer the model would give)
    score    the cached list; or popularity (no history the model knows, or the store is down);
             or the model: user vector (cached, advanced or computed) -> top-k, seen items excluded;
             every source keeps only what the rules allow, k items whenever k are eligible
    shape    re-rank (diversify, cap per cluster) down to k
    explain  the history events behind each item, when asked
    record   the served list for online scoring (in the background: never delays the answer)

GET /recommend, its pre-routed fast path and POST /recommend (an anonymous sequence: nothing read
or stored, no user) all call `recommend` (app/api/routes/recommend.py); the edge only parses the
request and writes the answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from app.bundles.index import ExactIndex
from app.serving.catalog import NO_RULES, Limits, Rules, Wanted, from_candidates, popular_eligible, top_eligible
from app.serving.diversity import ListShape
from app.serving.errors import Refused
from app.serving.events import EventTypes, event_types
from app.serving.explain import explain as explain_items
from app.serving.usercache import Answer, UserVector
from app.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.bundles.bundle import Bundle
    from app.bundles.registry import Registry
    from app.runtime.metrics import Metrics
    from app.serving.catalog import Catalog
    from app.serving.experiment import Experiment
    from app.serving.online import Live
    from app.serving.usercache import Read, UserCache
    from app.settings import Settings
    from app.stores.base import EventStore


# A plain list computed for the user cache is the user's unfiltered top `candidates_depth(k)`, so that
# a later read of the same history with a filter, an exclusion or a catalogue change in between is
# answered from it too (docs/shop.md): about 2 k survive a rule that keeps 10% of the catalogue.
# At most CANDIDATES_MAX (16 KB an entry) unless k is larger.
CANDIDATES_MIN = 200
CANDIDATES_PER_K = 8
CANDIDATES_MAX = 2000
NO_LIST = 2**31 - 1  # a read that asks for a list this long gets the history (and its check) back


def candidates_depth(k: int) -> int:
    """How many unfiltered candidates a cached list of k keeps."""
    return max(CANDIDATES_MIN, min(CANDIDATES_PER_K * k, CANDIDATES_MAX), k)


class Serving(Protocol):
    """What the pipeline reads of the process (app/state.py's AppState is one)."""

    settings: Settings
    registry: Registry
    store: EventStore
    metrics: Metrics
    user_cache: UserCache | None
    live: Live | None
    experiment: Experiment | None
    catalog: Catalog | None


@dataclass(frozen=True)
class Ask:
    """A validated request for a list: a stored user's, or (`history` set) an anonymous sequence's."""

    user_id: str | None
    k: int = 10
    model: str | None = None  # bundle name or model kind; None: the A/B variant or the default
    exclude_seen: bool = True
    explain: bool = False
    shape: ListShape = field(default_factory=ListShape)
    wanted: Wanted = field(default_factory=Wanted)  # filter, exclusions, availability, named rule
    history: tuple[str, ...] | None = None  # an anonymous request's items, oldest first
    times: tuple[float, ...] | None = None  # and their times (epoch s), when sent
    types: tuple[str, ...] | None = None  # and their event types (known ones), when sent

    @property
    def plain(self) -> bool:
        """Seen items excluded, nothing re-ranked or explained: a list the cache may hold whole."""
        return self.exclude_seen and not self.explain and not self.shape.active


@dataclass(frozen=True)
class Recommendation:
    user_id: str | None  # None: an anonymous sequence
    bundle: Bundle
    variant: str
    ids: list[str]
    scores: list[float]
    source: str  # "model" | "popularity"
    history_length: int
    fallback: str | None
    because: list[list[dict[str, Any]]] | None = None  # per item, when explanations were asked
    filtered: int | None = None  # items the rules removed; None (and not written): no rule applied
    rules: str | None = None  # "applied" | "stale" | "not_applied"

    def json(self) -> bytes:
        """The JSON body of GET /recommend (RecommendOut; SequenceOut without `user_id` for POST
        /recommend): written here because re-validating the model that this code builds costs
        more CPU than the top-k itself; the route's response_model stays the contract, and the
        tests check every answer against it. `filtered` and `rules` only when a rule applied, so
        answers without rules stay exactly as they were."""
        body: dict[str, Any] = {} if self.user_id is None else {"user_id": self.user_id}
        body |= {
            "items": [{"item_id": i, "score": s} for i, s in zip(self.ids, self.scores, strict=True)],
            "model": self.bundle.model,
            "bundle": self.bundle.name,
            "version": self.bundle.version,
            "source": self.source,
            "history_length": self.history_length,
            "fallback": self.fallback,
            "variant": self.variant,
        }
        if self.rules is not None:
            body["filtered"], body["rules"] = self.filtered, self.rules
        if self.because is not None:
            for item, why in zip(body["items"], self.because, strict=True):
                item["because"] = why
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class _History:
    """What the read step found."""

    read: Read | None  # through the cache; None without one
    events: list[str]
    times: list[float] | None
    failure: str | None = None  # "store_unavailable"
    excluded: Sequence[str] = ()  # items never to list: negative feedback, SEQREC_EXCLUDE_TYPES
    types: Sequence[str | None] | None = None  # each event's type (None: the default), for bundles that read them


@dataclass
class _Scored:
    labels: np.ndarray
    scores: np.ndarray
    source: str
    n_seen: int
    seen: np.ndarray | None = None  # the encoded history (model answers computed now)
    seen_times: np.ndarray | None = None
    user: UserVector | None = None


async def recommend(state: Serving, ask: Ask) -> Recommendation:
    """Top-k for a user or an anonymous sequence. Raises Refused (k above the maximum, a re-ranking
    the bundle cannot do, an unknown rule), FilterError (a filter that does not parse or fit the
    catalogue) and UnknownModel, before anything is read or recorded."""
    if ask.k > state.settings.max_k:
        raise Refused(f"k must be at most {state.settings.max_k}")
    bundle, variant = choose_bundle(state, ask)
    want = ask.shape.pool(bundle, ask.k)  # more candidates when the list is re-ranked
    rules = state.catalog.rules(bundle, ask.wanted, variant) if state.catalog is not None else NO_RULES
    history = await read_user(state, ask, bundle, rules)
    got = score(state, ask, bundle, history, want, rules)
    labels, scores = ask.shape.rerank(bundle, got.labels, got.scores, ask.k)
    ids = bundle.external(labels)
    because = None
    if ask.explain:  # popularity answers have no history to explain: empty lists
        because = explain_list(state, bundle, got, labels) if got.source == "model" else [[] for _ in ids]
    if state.live is not None and ask.user_id is not None:
        state.live.served(ask.user_id, bundle.name, variant, ids)  # in the background
    failure = history.failure or ("no_history" if got.source == "popularity" else None)
    return Recommendation(
        user_id=ask.user_id,
        bundle=bundle,
        variant=variant,
        ids=ids,
        scores=scores.tolist(),
        source=got.source,
        history_length=got.n_seen,
        fallback=failure if got.source == "popularity" else None,
        because=because,
        filtered=rules.filtered,
        rules=rules.state,
    )


def choose_bundle(state: Serving, ask: Ask) -> tuple[Bundle, str]:
    """The bundle and the variant it is counted under: explicit, the user's A/B variant, or default
    (an anonymous sequence has no user to assign: the default)."""
    model, variant = ask.model, "explicit" if ask.model is not None else "default"
    if model is None and state.experiment is not None and ask.user_id is not None:
        assigned = state.experiment.assign(ask.user_id)
        model, variant = assigned.bundle, assigned.name
    return state.registry.get(model), variant


def _sent(ask: Ask, bundle: Bundle, types: EventTypes) -> _History:
    """An anonymous request's sequence as a read history: ordered by its times when it has them
    (as the store orders a user's events), each event without a time taken as now; items of a
    negative type are not read, and they and the items of SEQREC_EXCLUDE_TYPES are excluded."""
    items = list(ask.history or ())
    read, away = types.split(items, ask.types)
    times = ask.times
    order = read if times is None else sorted(read, key=lambda n: times[n])
    sent = None if ask.types is None else [ask.types[n] for n in order]
    if times is None:
        now = [time.time()] * len(order) if bundle.needs_times else None
        return _History(None, [items[n] for n in order], now, excluded=away, types=sent)
    return _History(None, [items[n] for n in order], [times[n] for n in order], excluded=away, types=sent)


async def read_user(state: Serving, ask: Ask, bundle: Bundle, rules: Rules = NO_RULES) -> _History:
    """The history (through the cache when it is on); an unreachable store is an empty history.

    A cached list is taken only if the rules leave k items of it; otherwise the history is read."""
    if ask.history is not None:
        return _sent(ask, bundle, event_types(state.settings))
    user_id = ask.user_id
    assert user_id is not None  # an Ask without history names a user
    t0 = time.perf_counter()
    cache = state.user_cache
    try:
        if cache is not None and not bundle.needs_types:  # (a bundle that reads types is not cached)
            # A selective rule rarely keeps k of the cached candidates: read the history at once.
            lists = ask.plain and _from_candidates(state, bundle, rules, ask.k)
            read = await cache.read(user_id, state.settings.max_history, bundle, ask.k if lists else 0)
            if read.answer is not None and (rules.active or read.excluded):
                # (the user's exclusion set: a list cached before an excluding event that changed
                # nothing else in the window)
                a = read.answer
                kept = rules.passes(a.labels, bundle.encode(read.excluded) if read.excluded else None)
                if int(kept.sum()) >= ask.k:
                    read = replace(read, answer=Answer(a.labels[kept], a.scores[kept], a.n_seen))
                else:  # the history, with its check: the candidates computed now are stored again
                    read = await cache.read(user_id, state.settings.max_history, bundle, NO_LIST)
            found = _History(read, read.history or [], read.times, excluded=read.excluded)
        else:
            got = await state.store.read(user_id, state.settings.max_history, bundle.needs_times, bundle.needs_types)
            found = _History(None, got.items, got.times, excluded=got.excluded, types=got.types)
    except StoreUnavailable:
        state.metrics.store_errors.labels("history").inc()
        found = _History(None, [], [], "store_unavailable")
    state.metrics.store_read.labels(state.store.kind).observe(time.perf_counter() - t0)
    return found


def _from_candidates(state: Serving, bundle: Bundle, rules: Rules, k: int) -> bool:
    """Whether the user's cached candidates (`candidates_depth(k)`) should answer these rules."""
    if rules.mask is None:
        return True
    limits = state.catalog.limits if state.catalog is not None else Limits()
    exact = isinstance(bundle.index, ExactIndex)
    return from_candidates(rules, k, candidates_depth(k), len(bundle.item_ids), exact, limits)


def score(state: Serving, ask: Ask, bundle: Bundle, history: _History, want: int, rules: Rules = NO_RULES) -> _Scored:
    """Candidates, best first: the cached list, popularity, or the model's top `want`; only what
    the rules allow."""
    read = history.read
    if read is not None and read.answer is not None:
        a = read.answer
        return _Scored(a.labels[: ask.k], a.scores[: ask.k], "model", a.n_seen)
    seen, seen_times = bundle.encode_events(history.events, history.times)
    excluded = bundle.encode(history.excluded) if history.excluded else seen[:0]
    if len(seen) == 0:  # nothing the model knows was seen: only the user's exclusion set to leave out
        state.metrics.fallbacks.labels(history.failure or "no_history").inc()
        if len(excluded):
            rules = replace(rules, exclude=np.concatenate([rules.exclude, excluded]))
        labels, scores = rank_popular(bundle, want, rules)
        return _Scored(labels, scores, "popularity", 0, seen, seen_times)
    metrics, cache = state.metrics, state.user_cache
    t1 = time.perf_counter()
    if cache is None or read is None:
        user = None
        tms = None if seen_times is None else [seen_times]
        if bundle.needs_types:  # each event's type id as the encoder's extra input
            default = state.settings.default_event_type
            names = [t or default for t in (history.types or [None] * len(history.events))]
            vec = bundle.typed_vectors([seen], [bundle.encode_types(history.events, names)], tms)
        else:
            vec = bundle.user_vectors([seen], tms)  # (1, D)
    else:  # the cached vector only when it was computed from exactly this history and bundle
        assert ask.user_id is not None  # only a stored user's history is read through the cache
        user = cache.user_vector(ask.user_id, bundle, seen, read, seen_times)
        vec = user.vec
    t2 = time.perf_counter()
    limits = state.catalog.limits if state.catalog is not None else Limits()
    # Seen items (SEQREC_EXCLUDE_TYPES `*`, unless the request keeps them) and the exclusion set.
    away = seen if ask.exclude_seen and event_types(state.settings).excludes_seen else seen[:0]
    away = np.concatenate([away, excluded]) if len(excluded) else away
    if cache is not None and read is not None and user is not None and ask.plain and user.base is not None:
        # A list the cache keeps with the vector (the read asked for one: `_from_candidates` holds):
        # the user's unfiltered candidates, the rules applied to them now and to whatever a later
        # read gets back.
        assert ask.user_id is not None
        labels, scores, raw = rank_candidates(bundle, vec, want, away, candidates_depth(want), rules, limits)
        cache.remember(ask.user_id, bundle, read, user, raw[0], raw[1], len(seen))
    else:
        labels, scores, _ = rank_model(bundle, vec, want, away, len(away) > 0, rules, limits)
    t3 = time.perf_counter()
    metrics.inference.labels(bundle.name).observe(t2 - t1)
    metrics.topk.labels(bundle.name).observe(t3 - t2)
    return _Scored(labels, scores, "model", len(seen), seen, seen_times, user or UserVector(vec, None))


def rank_model(
    bundle: Bundle,
    vec: np.ndarray,
    want: int,
    seen: np.ndarray,
    exclude_seen: bool,
    rules: Rules = NO_RULES,
    limits: Limits = Limits(),
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """A model answer from the user vector (1, D): the best `want` labels and scores, the seen items
    left out when asked, only what the rules keep; and the unfiltered candidates a cache may keep
    (None: not the user's whole list). The batch lists (app/serving/batch.py) rank with it too."""
    if not rules.active:
        labels, scores = bundle.index.search(vec, want, [seen] if exclude_seen else None)
        ok = labels[0] > 0
        labels, scores = labels[0][ok], scores[0][ok]
        return labels, scores, (labels, scores)
    away = seen if exclude_seen else seen[:0]
    n = len(bundle.item_ids)
    labels, scores, raw = top_eligible(bundle.index, bundle.vectors, vec, want, away, rules, n, limits)
    if len(rules.exclude):
        raw = None  # a list without the ids asked away is not the user's list
    return labels, scores, raw


def rank_candidates(
    bundle: Bundle,
    vec: np.ndarray,
    want: int,
    away: np.ndarray,
    depth: int,
    rules: Rules = NO_RULES,
    limits: Limits = Limits(),
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A model answer and the user's unfiltered candidates: the best max(depth, want) labels and
    scores of the user vector (1, D), `away` left out. The answer is their top `want` that the rules
    keep when that many survive (see `from_candidates` for when that is asked), else `rank_model`'s."""
    cand, cand_scores = bundle.index.search(vec, max(depth, want), [away])
    ok = cand[0] > 0
    cand, cand_scores = cand[0][ok], cand_scores[0][ok]
    if not rules.active:
        return cand[:want], cand_scores[:want], (cand, cand_scores)
    kept = rules.passes(cand)
    if int(kept.sum()) >= want:
        return cand[kept][:want], cand_scores[kept][:want], (cand, cand_scores)
    labels, scores, _ = rank_model(bundle, vec, want, away, len(away) > 0, rules, limits)
    return labels, scores, (cand, cand_scores)


def rank_popular(bundle: Bundle, want: int, rules: Rules = NO_RULES) -> tuple[np.ndarray, np.ndarray]:
    """A popularity answer (no history the model knows): the most popular labels the rules keep, and
    their popularity as scores."""
    labels = popular_eligible(bundle.popular, want, rules)
    return labels, bundle.popularity_score[labels - 1]


def explain_list(state: Serving, bundle: Bundle, got: _Scored, labels: np.ndarray) -> list[list[dict[str, Any]]]:
    """The history events behind each listed item (app/serving/explain.py)."""
    assert got.seen is not None and got.user is not None
    settings = state.settings
    return explain_items(
        bundle,
        got.seen,
        labels,
        settings.explain_n,
        times=got.seen_times,
        threads=settings.explain_threads,
        user=got.user.vec[0],  # the history's own vector: the ablation graph does not recompute it
    )
