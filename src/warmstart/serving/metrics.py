"""Prometheus export of the server's figures (one registry per server, read at scrape time).

Stage and store counters already live in the stages and tiers; a custom collector turns their
snapshots into metric families when ``/metrics`` is scraped, so serving a request costs nothing
extra except the end-to-end latency histogram observed by the handlers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _ServerCollector(Collector):
    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        stats = self.server.stats()
        depth = GaugeMetricFamily("warmstart_stage_queue_depth", "queued items", labels=["stage"])
        items = CounterMetricFamily(
            "warmstart_stage_items", "items by outcome", labels=["stage", "outcome"]
        )
        service = GaugeMetricFamily(
            "warmstart_stage_service_seconds", "batch service time", labels=["stage", "quantile"]
        )
        wait = GaugeMetricFamily(
            "warmstart_stage_wait_seconds", "queue wait", labels=["stage", "quantile"]
        )
        batch = CounterMetricFamily(
            "warmstart_stage_batches", "batches by size", labels=["stage", "size"]
        )
        tiers = CounterMetricFamily(
            "warmstart_store_keys", "store lookups by tier and result", labels=["tier", "result"]
        )
        shed = CounterMetricFamily(
            "warmstart_admission", "admission decisions", labels=["pipeline", "decision"]
        )
        lag = GaugeMetricFamily(
            "warmstart_loop_lag_seconds", "the event loop's recent lateness (admission counts it)"
        )
        lag.add_metric([], stats["loop_lag_ms"] / 1e3)
        for pipeline in ("recommend", "search"):
            snap = stats.get(pipeline)
            if snap is None:
                continue
            for s in snap["stages"]:
                name = s["name"]
                depth.add_metric([name], s["queue_depth"])
                for outcome in ("completed", "failed", "rejected", "expired"):
                    items.add_metric([name, outcome], s[outcome])
                for q in ("p50", "p99"):
                    service.add_metric([name, q], s["service_ms"][q] / 1e3)
                    wait.add_metric([name, q], s["wait_ms"][q] / 1e3)
                for size, n in s["batch_sizes"].items():
                    batch.add_metric([name, str(size)], n)
            for decision in ("admitted", "degraded", "rejected"):
                shed.add_metric([pipeline, decision], snap["admission"][decision])
            for tier, t in snap.get("store", {}).items():
                tiers.add_metric([tier, "hit"], t["hits"])
                tiers.add_metric([tier, "miss"], t["misses"])
        yield from (depth, items, service, wait, batch, tiers, shed, lag)


class MetricsExporter:
    """A server's registry: the collector above plus request latency per endpoint."""

    def __init__(self, server: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ServerCollector(server))
        self.latency = Histogram(
            "warmstart_request_seconds",
            "end-to-end handler latency of answered requests",
            ["endpoint"],
            registry=self.registry,
            buckets=_BUCKETS,
        )
        self._latency_of: dict[str, Any] = {}  # the histogram's child per endpoint

    def observe(self, endpoint: str, seconds: float) -> None:
        child = self._latency_of.get(endpoint)
        if child is None:  # ``labels`` hashes and checks its arguments on every call
            child = self._latency_of[endpoint] = self.latency.labels(endpoint)
        child.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
