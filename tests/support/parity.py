"""What the cache-on / cache-off parity tests share: the store settings of their apps, and the
user cache's outcome counters read from /metrics."""

from __future__ import annotations

from typing import Any

# A parity test compares model answers: on a loaded machine the default 0.25 s read timeout can turn
# one into a popularity fallback (the documented fault path, not a cache defect), hence 5 s. Online
# scoring is not under test there, and with a 5 s store timeout each event's look, and so the app's
# shutdown, would wait 5 s: it is off.
PATIENT_STORE: dict[str, Any] = {"redis_timeout": 5.0, "online_tracking": False}


def cache_outcomes(client: Any, drop_zero: bool = False) -> dict[str, float]:
    """seqrec_user_cache_total by outcome (hit, miss, list, advance, rebuild, ...) of the app behind
    `client` (a TestClient); with `drop_zero`, only the outcomes counted at least once."""
    out: dict[str, float] = {}
    for ln in client.get("/metrics").text.splitlines():
        if ln.startswith("seqrec_user_cache_total{") and (not drop_zero or float(ln.split()[-1])):
            out[ln.split('"')[1]] = float(ln.split()[-1])
    return out
