"""Lost jobs, found by whoever is up: the API process and every worker supervisor run ``reap`` regularly.

A running job whose heartbeat expired (its worker died) is queued again, or failed as retryable once it
has had ``GIF_JOB_MAX_ATTEMPTS`` attempts; a job still queued a heartbeat window after it was recorded that
the queue no longer holds is enqueued again: its queue entry was lost (Redis restarted without its
append-only file, the API died between recording and enqueueing) or a worker took it and died before
starting it — unless workers took it more often than ``GIF_JOB_MAX_ATTEMPTS`` allows, when it is failed: no
job is retried forever. Both are safe to run from many processes at once: each change is one atomic transition of
the job record, and enqueueing twice is harmless because only one worker can move the record from queued
to running.
"""

from __future__ import annotations

import logging

from service.core import retention
from service.core.context import ServiceContext
from service.core.queue import enqueue_again, held_job_ids
from service.core.webhooks import notify_end_in_background

log = logging.getLogger("service.core.reaper")


def requeue_lost(ctx: ServiceContext) -> list[str]:
    """Enqueue again every job queued for longer than a heartbeat window that the queue no longer holds."""
    held = held_job_ids(ctx.queue)
    lost = [
        job_id
        for job_id in ctx.jobs.queued_longer_than(ctx.settings.heartbeat_ttl_s, ctx.settings.queue_name)
        if job_id not in held
    ]
    requeued = []
    for job_id in lost:
        # A job just taken may look lost while its process starts (RQ keeps it in no list then), and enqueueing it
        # twice is harmless; only a job taken once more than its attempts allow was lost each time.
        if ctx.jobs.attempts(job_id) > ctx.settings.job_max_attempts:
            cause = "workers took the job off the queue but none ran it to an end"
            if ctx.jobs.retry_or_fail(job_id, cause, ctx.settings.job_max_attempts) == "failed":
                log.warning("job was taken too often; marked failed", extra={"job_id": job_id})
                notify_end_in_background(ctx, job_id)
            continue
        enqueue_again(ctx.queue, job_id, ctx.settings.job_timeout_s)
        requeued.append(job_id)
    return requeued


def reap(ctx: ServiceContext) -> None:
    """One pass: run again (or fail) jobs that lost their worker, re-enqueue jobs that lost their queue entry, and
    remove what retention says has expired."""
    for job_id, outcome in ctx.jobs.reap_lost(ctx.settings.job_max_attempts):
        log.warning("job lost its worker; %s", outcome, extra={"job_id": job_id})
        if outcome == "failed":
            notify_end_in_background(ctx, job_id)
        else:
            enqueue_again(ctx.queue, job_id, ctx.settings.job_timeout_s)
    for job_id in requeue_lost(ctx):
        log.warning("job was missing from the queue; enqueued again", extra={"job_id": job_id})
    retention.expire(ctx)
