"""Prometheus metrics: job counts, durations and queue depth read from Redis at scrape time, plus HTTP requests.

Jobs finish in worker processes, so their numbers live in Redis (``JobStore``) and every API
replica reports the same totals; HTTP metrics are per process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.context import ServiceContext
from service.core.jobs import DURATION_BUCKETS_S, TERMINAL


class JobCollector(Collector):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("gif_jobs", "Jobs by status.", labels=["status"])
        for status, count in self.ctx.jobs.count_by_status().items():
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily(
            "gif_queue_depth", "Jobs waiting in the queue for a worker.", value=self.ctx.queue.count
        )
        raw = self.ctx.jobs.durations()
        durations = HistogramMetricFamily(
            "gif_job_duration_seconds", "Running time of finished jobs (start to finish).", labels=["status"]
        )
        for status in sorted(TERMINAL):
            buckets = [(str(float(b)), int(raw.get(f"{status}:le:{b}", 0))) for b in DURATION_BUCKETS_S]
            buckets.append(("+Inf", int(raw.get(f"{status}:count", 0))))
            durations.add_metric([status], buckets, float(raw.get(f"{status}:sum", 0.0)))
        yield durations


class HttpMetrics:
    """ASGI middleware: requests by method, route template and status, and their latency."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry):
        self.app = app
        self.requests = Counter("gif_http_requests", "HTTP requests.", ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "gif_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5, 30),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - started)


def job_registry(ctx: ServiceContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(ctx))
    return registry
