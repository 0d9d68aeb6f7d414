"""Prometheus metrics of one serving process (own registry, so several Rankers can live in a test)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """requests, latency histograms, knowledge fallbacks, store errors, current knowledge version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "llm4msr_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.request_latency = Histogram(
            "llm4msr_request_latency_seconds",
            "HTTP /score latency (server side)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.score_latency = Histogram(
            "llm4msr_score_latency_seconds",
            "Ranker.score latency incl. the knowledge read",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.candidates = Histogram(
            "llm4msr_candidates",
            "candidate items per scoring request",
            buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.fallbacks = Counter(
            "llm4msr_knowledge_fallback",
            "scoring requests served with the fallback user knowledge, by reason",
            ["reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "llm4msr_store_errors", "online-store reads that failed (backend errors)", registry=r
        )
        self.version_changes = Counter(
            "llm4msr_knowledge_version_changes",
            "times the store's current knowledge version changed",
            registry=r,
        )
        self.versions_rejected = Counter(
            "llm4msr_knowledge_versions_rejected",
            "store versions not adopted because their scenario vectors could not all be read",
            registry=r,
        )
        self.knowledge_ok = Gauge(
            "llm4msr_knowledge_agrees",
            "1 when the store's knowledge family/dimension match the model",
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
