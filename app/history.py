"""History transforms: what a model reads, derived from a user's events and their times.

A bundle may declare in its manifest a `history_transform` (a dict with a `kind` and the kind's
parameters) that maps a history (item indices and unix-second times, oldest first) to the
sequence its encoder reads, e.g. events repeated by how long the user dwelt on them. The
trainer applies the same function to its evaluation histories and the service to every live
history, so offline evaluation is what is served. Pure numpy: training imports this module
too; it stays free of the service's dependencies.

Adding a kind: a function `(spec, items, times) -> (items, times)` registered in TRANSFORMS,
with its parameters checked by a function in CHECKS (a bundle naming an unknown kind, or bad
parameters, is refused at load).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from app.manifest import BundleError

Transform = Callable[[dict[str, Any], np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

TRANSFORMS: dict[str, Transform] = {}
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {}


def check_transform(spec: dict[str, Any] | None) -> None:
    """Refuse a manifest transform this code cannot apply exactly (BundleError naming it)."""
    if spec is None:
        return
    kind = spec.get("kind")
    if kind not in TRANSFORMS:
        known = ", ".join(sorted(TRANSFORMS)) or "none"
        raise BundleError(f"history_transform kind {kind!r} is not known to this server (known: {known})")
    check = CHECKS.get(str(kind))
    if check is not None:
        check(spec)


def apply_transform(spec: dict[str, Any] | None, items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(items, times) of one history, oldest first -> what the encoder reads (same kinds of arrays)."""
    if spec is None:
        return items, times
    if len(items) != len(times):
        raise ValueError(f"history has {len(items)} items but {len(times)} times")
    return TRANSFORMS[spec["kind"]](spec, items, times)
