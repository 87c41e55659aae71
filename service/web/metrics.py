"""Prometheus metrics of jobs: counts, durations and queue depth, read from Redis at scrape time.

Jobs finish in worker processes, so their numbers live in Redis (``JobStore``) and every API
replica reports the same totals. HTTP request metrics are per process (``service.web.middleware``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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


def job_registry(ctx: ServiceContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(ctx))
    return registry
