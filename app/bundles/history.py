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

from app.bundles.manifest import BundleError

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


# --------------------------------------------------------------------------- dwell_repeat
# Dwell time (Bogina & Kuflik 2017): an event's dwell is the gap to the next event of the same
# session (sessions cut where two events are more than `session_gap_s` apart, as the time-gap
# session splitter does), capped at `cap_s`; the event is read floor(dwell / unit_s) + 1 times.
# The newest event of a history has no next event yet (its "next event" is what is being
# predicted), so its dwell is unknown and it is read once: the expansion uses only gaps inside
# the history, which is all a live service knows.

DWELL_KEYS = ("unit_s", "cap_s", "session_gap_s")


def dwell_counts(times: np.ndarray, unit_s: int, cap_s: int, session_gap_s: int) -> np.ndarray:
    """(n,) int64 copies of each event: floor(min(dwell, cap_s) / unit_s) + 1, where dwell is the
    gap to the next event when that event is in the same session; 1 for each session's last
    event (the history's newest included) and for an out-of-order (negative) gap."""
    t = np.asarray(times, dtype=np.int64)
    counts = np.ones(len(t), dtype=np.int64)
    if len(t) > 1:
        gap = np.diff(t)  # (n-1,): dwell of events 0..n-2, when the next one is in their session
        same_session = (gap >= 0) & (gap <= session_gap_s)
        counts[:-1] = np.where(same_session, np.minimum(gap, cap_s) // unit_s + 1, 1)
    return counts


def dwell_repeat(spec: dict[str, Any], items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each event repeated by its dwell (dwell_counts); a copy keeps its event's time."""
    counts = dwell_counts(times, int(spec["unit_s"]), int(spec["cap_s"]), int(spec["session_gap_s"]))
    return np.repeat(np.asarray(items), counts), np.repeat(np.asarray(times), counts)


def check_dwell(spec: dict[str, Any]) -> None:
    """unit_s a positive integer, cap_s and session_gap_s non-negative integers, nothing else."""
    extra = sorted(set(spec) - {"kind", *DWELL_KEYS})
    if extra:
        raise BundleError(f"history_transform dwell_repeat: unknown parameter(s) {', '.join(extra)}")
    for key in DWELL_KEYS:
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "unit_s" else 0):
            want = "a positive integer" if key == "unit_s" else "a non-negative integer"
            raise BundleError(f"history_transform dwell_repeat: {key} must be {want} (seconds), got {value!r}")


TRANSFORMS["dwell_repeat"] = dwell_repeat
CHECKS["dwell_repeat"] = check_dwell
