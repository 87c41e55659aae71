"""The RQ queue between the API and the workers: it carries job ids only.

The worker looks everything else up in the job record, so RQ's own keys may expire freely.
The API enqueues by dotted path and never imports the worker's code. What this needs of RQ's internals (its
registries) is in ``service.core.rq_internals``.
"""

from __future__ import annotations

from rq import Queue

from service.core.records import connect
from service.core.rq_internals import forget_job, leased_job_ids
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
    return set(queue.get_job_ids()) | leased_job_ids(queue)


def enqueue_again(queue: Queue, job_id: str, timeout_s: int) -> None:
    """Put a lost job back in the queue, once it is out of RQ's intermediate list and registries (``forget_job``)."""
    forget_job(queue, job_id)
    enqueue_job(queue, job_id, timeout_s)


def withdraw_job(queue: Queue, job_id: str) -> None:
    """Take a cancelled job off the queue with its RQ keys (a worker that popped it already finds it cancelled)."""
    job = queue.fetch_job(job_id)
    if job is not None:
        job.delete(remove_from_queue=True)
