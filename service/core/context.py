"""The wiring of the storage and record layer, built once per process from ``Settings``.

The API and the worker both build a ``ServiceContext``; it holds no web objects, so the worker
can use it without importing FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio
from rq import Queue

from service.core.catalog import Catalog
from service.core.fleet import Fleet
from service.core.idempotency import IdempotencyKeys
from service.core.jobs import JobStore
from service.core.queue import job_queue
from service.core.quotas import Limits, Quotas
from service.core.records import Keys, connect, connect_async
from service.core.settings import Settings
from service.core.storage import artifact_store
from service.core.storage.references import Artifacts


@dataclass
class ServiceContext:
    settings: Settings
    client: redis.Redis
    async_client: redis.asyncio.Redis
    artifacts: Artifacts
    catalog: Catalog
    jobs: JobStore
    queue: Queue
    idempotency: IdempotencyKeys
    fleet: Fleet
    quotas: Quotas

    @classmethod
    def create(cls, settings: Settings) -> ServiceContext:
        client = connect(settings.redis_url)
        keys = Keys(settings.key_prefix)
        artifacts = Artifacts(artifact_store(settings), client, keys)
        async_client = connect_async(settings.redis_url)
        limits = Limits(
            settings.quota_active_jobs,
            settings.quota_stored_bytes,
            settings.quota_submits_per_minute,
            settings.quota_requests_per_second,
        )
        quotas = Quotas(client, async_client, keys, limits)
        return cls(
            settings=settings,
            client=client,
            async_client=async_client,
            artifacts=artifacts,
            catalog=Catalog(client, keys, artifacts, quotas),
            jobs=JobStore(client, keys, artifacts, settings.heartbeat_ttl_s),
            queue=job_queue(settings),
            idempotency=IdempotencyKeys(client, keys, settings.idempotency_ttl_s),
            fleet=Fleet(client, keys, settings.heartbeat_ttl_s),
            quotas=quotas,
        )
