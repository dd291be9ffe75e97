"""Write rate limit per API key: a token bucket per caller, in this process.

Why in-process: it costs no extra Redis round trip on the write path and keeps working
(and keeps shedding load) when Redis is down. The price: with R processes behind a load
balancer a caller gets up to R x the rate (see README, Deployment). This module holds only the
buckets; the dependency that applies them (WriteLimit: who the caller is, the 429) is in app/api/deps.py.
"""

from __future__ import annotations

import time

MAX_CALLERS = 10_000  # buckets kept; beyond that the full (idle) ones are dropped


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill time)

    def take(self, caller: str, now: float | None = None) -> float:
        """Take one token. Returns 0 when allowed, else the seconds until a token is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self.buckets[caller] = (tokens - 1.0, now)
            if len(self.buckets) > MAX_CALLERS:
                self._evict(now)
            return 0.0
        self.buckets[caller] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        full = [c for c, (t, last) in self.buckets.items() if t + (now - last) * self.rate >= self.burst]
        for c in full:
            del self.buckets[c]
