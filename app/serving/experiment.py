"""A/B traffic split: every user is assigned to one variant (a bundle) by a salted hash of the user id.

    SEQREC_EXPERIMENT="control=sasrec-v1:50,treatment=sasrec-v2:50"   SEQREC_EXPERIMENT_SALT=2026-12

The hash is BLAKE2b of `salt \\x00 user_id`, so the assignment is the same in every process
and replica, stable while the experiment runs, and reshuffled only when the salt changes.
Weights are percentages: positive, summing to 100. Requests that name `?model=` explicitly
bypass the split (they are counted apart, as the `explicit` variant).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Protocol

from app.bundles.manifest import UnknownModel

# Variant names become Prometheus label values and JSON keys: keep them plain.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
RESERVED = {"default", "explicit"}  # what the service calls traffic outside an experiment
MAX_SPEC = 2000  # characters: a few dozen variants


class ServedBundles(Protocol):
    """What an experiment is checked against: the served bundles (app/bundles/registry.py)."""

    def get(self, name: str | None) -> object:
        """The bundle `name` names; UnknownModel when none."""
        ...


class ExperimentError(ValueError):
    """The experiment specification is invalid; the message names what is wrong."""


@dataclass(frozen=True)
class Variant:
    name: str
    bundle: str  # bundle name or model kind, as `?model=` accepts
    weight: float  # percent


@dataclass(frozen=True)
class Experiment:
    variants: tuple[Variant, ...]
    salt: str
    spec: str

    @classmethod
    def parse(cls, spec: str, salt: str = "") -> Experiment:
        """Refusals name a variant by its position and never repeat the submitted text: a reload's
        experiment arrives over HTTP, and its refusal goes back to the client and into the logs."""
        if len(spec) > MAX_SPEC:
            raise ExperimentError(f"the experiment is longer than {MAX_SPEC} characters")
        variants: list[Variant] = []
        for i, part in enumerate((p.strip() for p in spec.split(",")), start=1):
            if not part:
                continue
            name, eq, rest = part.partition("=")
            bundle, colon, weight_s = rest.rpartition(":")
            name, bundle = name.strip(), bundle.strip()
            where = f"variant {i}"
            if not eq or not colon or not name or not bundle:
                raise ExperimentError(f"{where}: expected name=bundle:weight")
            if not NAME.match(name):
                raise ExperimentError(f"{where}: a variant name is 1-32 letters, digits, '_', '.' or '-'")
            if name in RESERVED:
                raise ExperimentError(f"{where}: the names {', '.join(sorted(RESERVED))} are reserved")
            try:
                weight = float(weight_s)
            except ValueError:
                raise ExperimentError(f"{where}: the weight is not a number") from None
            if not math.isfinite(weight) or weight <= 0:
                raise ExperimentError(f"{where}: the weight must be a positive number")
            if any(v.name == name for v in variants):
                raise ExperimentError(f"{where}: the variant name is used twice")
            variants.append(Variant(name, bundle, weight))
        if len(variants) < 1:
            raise ExperimentError("an experiment needs at least one variant: name=bundle:weight,...")
        total = sum(v.weight for v in variants)
        if abs(total - 100.0) > 1e-6:
            raise ExperimentError(f"variant weights sum to {total:g}, they must sum to 100")
        return cls(tuple(variants), salt, spec)

    def check(self, registry: ServedBundles, *, quote: bool = False) -> None:
        """Every variant's bundle must be served by `registry`. `quote`: the experiment is the one
        running (not a request's input), so its variant and bundle may be named."""
        for i, v in enumerate(self.variants, start=1):
            try:
                registry.get(v.bundle)
            except UnknownModel as exc:
                # The valid names are the service's own; a submitted one is not repeated.
                what = f"variant {v.name!r} (bundle {v.bundle!r})" if quote else f"variant {i}"
                raise ExperimentError(f"{what}: its bundle is not served ({exc})") from None

    def bucket(self, user_id: str) -> float:
        """The user's point in [0, 100): uniform over users, deterministic everywhere."""
        h = hashlib.blake2b(f"{self.salt}\x00{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64 * 100.0

    def assign(self, user_id: str) -> Variant:
        x, acc = self.bucket(user_id), 0.0
        for v in self.variants:
            acc += v.weight
            if x < acc:
                return v
        return self.variants[-1]  # float rounding at the very top of the range


def load_experiment(spec: str | None, salt: str, registry: ServedBundles) -> Experiment | None:
    """Parse and check against the served bundles; None/empty = no experiment."""
    if spec is None or not spec.strip():
        return None
    exp = Experiment.parse(spec, salt)
    exp.check(registry)
    return exp


def next_experiment(
    current: Experiment | None, spec: str | None, registry: ServedBundles, salt: str, *, running: bool = False
) -> Experiment | None:
    """The experiment to install with `registry`: `spec` when given ("" = none), else `current`
    re-checked against the new bundles. Raises ExperimentError; nothing is changed then.
    `running`: `spec` is the experiment already serving, so a refusal may name its variants."""
    if running and current is not None and spec == current.spec:
        current.check(registry, quote=True)
        return current
    if spec is None:
        if current is None:
            return None
        current.check(registry)
        return current
    return load_experiment(spec, salt, registry)
