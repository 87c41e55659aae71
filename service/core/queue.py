"""The RQ queue between the API and the workers: it carries job ids only.

The worker looks everything else up in the job record, so RQ's own keys may expire freely.
The API enqueues by dotted path and never imports the worker's code.
"""

from __future__ import annotations

import time
from typing import cast

from rq import Queue

from service.core.records import connect
from service.core.settings import Settings

TASK = "worker.tasks.run_job"
RQ_RESULT_TTL_S = 600
RQ_FAILURE_TTL_S = 24 * 3600


def job_queue(settings: Settings) -> Queue:
    """RQ pickles its own job metadata, so it gets a binary client of its own."""
    return Queue(settings.queue_name, connection=connect(settings.redis_url, decode=False, timeout_s=None))


def enqueue_job(queue: Queue, job_id: str, timeout_s: int) -> None:
    queue.enqueue(
        TASK,
        job_id,
        job_id=job_id,
        job_timeout=timeout_s,
        result_ttl=RQ_RESULT_TTL_S,
        failure_ttl=RQ_FAILURE_TTL_S,
        description=f"edit {job_id}",
    )


def held_job_ids(queue: Queue) -> set[str]:
    """Ids of the jobs the queue still holds: waiting for a worker, or taken by a worker whose lease on them (RQ's
    started registry, renewed while that worker lives) has not expired. A job whose worker was killed between
    taking it and handing it over is in neither: RQ parks it in an intermediate list, where it would stay."""
    registry = queue.started_job_registry
    leased = queue.connection.zrangebyscore(registry.key, time.time(), "+inf")
    return set(queue.get_job_ids()) | {registry.parse_job_id(entry) for entry in leased}


def enqueue_again(queue: Queue, job_id: str, timeout_s: int) -> None:
    """Put a lost job back in the queue: out of RQ's intermediate list (so RQ does not re-enqueue it too), out of its
    started registry (a dead worker's lease would hide it for a minute and a half) and its failed registry (where an
    earlier attempt may have left it)."""
    registry = queue.started_job_registry
    entries = cast(list[bytes], queue.connection.zrange(registry.key, 0, -1))
    stale = [entry for entry in entries if registry.parse_job_id(entry.decode()) == job_id]
    if stale:
        queue.connection.zrem(registry.key, *stale)
    queue.connection.lrem(queue.intermediate_queue_key, 0, job_id)
    queue.failed_job_registry.remove(job_id)
    enqueue_job(queue, job_id, timeout_s)


def withdraw_job(queue: Queue, job_id: str) -> None:
    """Take a cancelled job off the queue with its RQ keys (a worker that popped it already finds it cancelled)."""
    job = queue.fetch_job(job_id)
    if job is not None:
        job.delete(remove_from_queue=True)
