"""Retention: finished jobs and unused uploads expire after the ages the operator sets (``GIF_RETENTION_*``).

The reaper runs ``expire`` on every pass, in every process that reaps; each pass removes at most
``GIF_RETENTION_BATCH`` jobs and as many uploads, oldest first, so a large backlog drains over several passes
without one pass holding Redis for long. Two indexes, both sorted sets scored by Unix time, name the candidates:
finished jobs by when they finished (``JobStore`` writes it with the final transition) and uploads by when they
were last used (uploaded, or named by a submitted job). What expiry may not touch:

- an upload named by a queued or running job (its index entry is refreshed instead, so it is looked at again
  only after another full age);
- a model registered from a job (``result.model_id``): it lives as long as its owner keeps it, as an upload the
  owner made would without retention; deleting the job that made it leaves it and its file in place.

A job removed here goes the way ``DELETE /v1/jobs/{id}`` goes: its record, and its holds on its inputs and
outputs (a blob goes with its last reference), so what another record still holds stays stored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from service.core.context import ServiceContext

log = logging.getLogger("service.core.retention")


@dataclass
class Expired:
    jobs: int = 0
    uploads: int = 0


def expire(ctx: ServiceContext, now: float | None = None) -> Expired:
    """One bounded pass: remove finished jobs older than ``GIF_RETENTION_JOBS_S`` and uploads unused for
    ``GIF_RETENTION_UPLOADS_S``; ``now`` (Unix seconds) for tests."""
    settings, now = ctx.settings, time.time() if now is None else now
    expired = Expired()
    if settings.retention_jobs_s is not None:
        ctx.jobs.index_finished_before_retention()
        for job_id in ctx.jobs.finished_before(now - settings.retention_jobs_s, settings.retention_batch):
            expired.jobs += ctx.jobs.delete(job_id)
            ctx.jobs.forget_finished(job_id)  # also when another process deleted it first
    if settings.retention_uploads_s is not None:
        stale = ctx.catalog.unused_since(now - settings.retention_uploads_s, settings.retention_batch)
        in_use = active_inputs(ctx) if stale else set()
        ctx.catalog.touch(*(item for item in stale if item[1] in in_use), when=now)
        for kind, item_id in stale:
            if item_id not in in_use:
                expired.uploads += ctx.catalog.expire(kind, item_id)
    if expired.jobs or expired.uploads:
        log.info("retention removed %d finished jobs and %d unused uploads", expired.jobs, expired.uploads)
    return expired


def active_inputs(ctx: ServiceContext) -> set[str]:
    """The upload ids named by queued or running jobs."""
    active = [job_id for status in ("queued", "running") for job_id in ctx.jobs.ids_with(status)]
    return {ref.id for job_id in active if (job := ctx.jobs.get(job_id)) for ref in job.inputs.values()}
