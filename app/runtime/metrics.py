"""Prometheus metrics. Labels are routes and outcomes only, never user or item ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """One registry per app instance, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "seqrec_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "seqrec_inference_seconds", "ONNX user-vector time", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.topk = Histogram(
            "seqrec_topk_seconds", "Top-k search time", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.store_read = Histogram(
            "seqrec_store_read_seconds", "History read time", ["store"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.fallbacks = Counter(
            "seqrec_recommend_fallback_total", "Popularity answers by reason", ["reason"], registry=r
        )
        self.events = Counter("seqrec_events_total", "Events by outcome", ["outcome"], registry=r)
        self.store_errors = Counter("seqrec_store_errors_total", "Store failures", ["op"], registry=r)
        self.rate_limited = Counter("seqrec_rate_limited_total", "Writes refused with 429", registry=r)
        self.reloads = Counter("seqrec_bundle_reloads_total", "Bundle reloads", ["result"], registry=r)
