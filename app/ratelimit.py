"""Write rate limit per API key: a token bucket per caller, in this process.

Why in-process: it costs no extra Redis round trip on the write path and keeps working
(and keeps shedding load) when Redis is down. The price: with R processes behind a load
balancer a caller gets up to R x the rate (see README, Deployment). A caller is its API key
(hashed: the raw secret is not kept as a dict key), or its client address when no key is sent.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status

from app.deps import State, api_key_header

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


async def limit_writes(state: State, request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """429 + Retry-After when the caller exceeds SEQREC_WRITE_RATE_PER_S (burst SEQREC_WRITE_BURST)."""
    buckets: TokenBuckets | None = state.write_limiter
    if buckets is None:
        return
    if key is not None:
        caller = "k:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    else:
        caller = "ip:" + (request.client.host if request.client else "?")
    wait = buckets.take(caller)
    if wait > 0:
        state.metrics.rate_limited.inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"write rate limit of {buckets.rate:g}/s per API key exceeded; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


WriteLimit = Depends(limit_writes)
