"""Every use of RQ's internals, in one module, for RQ 3 only (``rq>=3,<4`` in pyproject.toml).

Elsewhere the service uses RQ's documented API (``Queue.enqueue``, ``fetch_job``, ``get_current_job``…). What it
needs beyond that is here: the layout of RQ's started registry, intermediate list and failed registry (to find and
re-enqueue lost jobs), and an RQ worker whose work-horse is a process RQ did not fork (``worker.runner`` starts it
ahead of its job; ``worker.horse`` becomes RQ's work-horse in it). Each override says what RQ does and why we differ.
Importing this module under another RQ major version is an ``ImportError``: read it again before moving the pin.
The API imports it too (through ``service.core.queue``), so it never imports ``worker``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, cast

import rq
from redis import Redis
from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job

RQ_MAJOR = 3

if int(rq.__version__.split(".")[0]) != RQ_MAJOR:
    raise ImportError(
        f"service.core.rq_internals is written for RQ {RQ_MAJOR}.x (pyproject.toml pins rq>={RQ_MAJOR},"
        f"<{RQ_MAJOR + 1}), but RQ {rq.__version__} is installed: reinstall the project's dependencies"
    )


# --- the queue's registries (API, reaper and RQ worker) ---------------------------------------------


def leased_job_ids(queue: Queue) -> set[str]:
    """Jobs taken by a worker whose lease on them (an entry of RQ's started registry, scored by its expiry and renewed
    while that worker lives) has not expired. RQ offers no query by expiry, so the registry's sorted set is read."""
    registry = queue.started_job_registry
    leased = queue.connection.zrangebyscore(registry.key, time.time(), "+inf")
    return {registry.parse_job_id(entry) for entry in leased}


def forget_job(queue: Queue, job_id: str) -> None:
    """Take a lost job out of RQ's bookkeeping before it is enqueued again: out of its intermediate list (so that RQ
    does not re-enqueue it too), out of its started registry (a dead worker's lease would hide it for a minute and a
    half; RQ removes an entry only by its execution, which we do not know) and its failed registry (where an earlier
    attempt may have left it)."""
    registry = queue.started_job_registry
    entries = cast(list[bytes], queue.connection.zrange(registry.key, 0, -1))
    stale = [entry for entry in entries if registry.parse_job_id(entry.decode()) == job_id]
    if stale:
        queue.connection.zrem(registry.key, *stale)
    queue.connection.lrem(queue.intermediate_queue_key, 0, job_id)
    queue.failed_job_registry.remove(job_id)


# --- an RQ worker whose work-horse is started ahead of its job (worker.runner) -------------------------


class HandOffWorker(Worker):
    """RQ's worker, with each job handed to a process the subclass started rather than to a fork of this process.
    RQ's parent loop watches that process as it would a forked horse (time limit, cancel, death). The subclass says
    what happens through the hooks below; it touches no RQ internals itself."""

    # --- the subclass's hooks ----------------------------------------------------------------------

    def before_dequeue(self) -> None:
        """Return once a process is ready to run the next job."""

    def job_taken(self, job: Job) -> None:
        """RQ has taken ``job`` off the queue."""

    def start_job_process(self, job: Job, handoff: dict[str, Any]) -> int:
        """Hand ``job`` to a process that passes ``handoff`` to ``become_work_horse``; its pid."""
        raise NotImplementedError

    def job_process_started(self, job: Job, pid: int) -> None:
        """RQ now watches process ``pid`` as the work-horse of ``job``."""

    def job_process_died(self, job: Job, wait_status: int) -> None:
        """The process running ``job`` ended without finishing it (``wait_status`` as ``os.wait4`` gives it); RQ
        records the failure after this."""

    def job_process_reaped(self, queue: Queue) -> None:
        """RQ has reaped the job's process and recorded how the job ended."""

    def job_done(self) -> None:
        """The job is over, however it ended (called even when RQ's loop raised)."""

    # --- RQ's hooks, overridden --------------------------------------------------------------------

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # RQ blocks on the queue for the next job; we first make sure a process is ready to run it.
        self.before_dequeue()
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if result is not None:
            self.job_taken(result[0])
        return result

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        # RQ forks this process into the horse (unsafe after torch ran here); we hand the job to a started process
        # and set RQ's private horse pid to it, which RQ's monitor then waits on, times out and kills as its own.
        assert self.execution is not None  # RQ's execute_job prepared it before forking
        handoff = {"worker_key": self.key, "job_id": job.id, "queue": queue.name, "execution_id": self.execution.id}
        pid = self.start_job_process(job, handoff)
        self._horse_pid = pid
        self.job_process_started(job, pid)

    def handle_work_horse_killed(self, job: Job, retpid: Any, ret_val: Any, rusage: Any) -> None:
        # RQ only logs (and calls an optional handler) when the horse dies unfinished; we also decide the job's fate.
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        self.job_process_died(job, ret_val)

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        # RQ waits for the horse and records a failed attempt; only after that may a job to retry be enqueued again.
        super().monitor_work_horse(job, queue, execution)
        self.job_process_reaped(queue)

    def execute_job(self, job: Job, queue: Queue) -> None:
        # RQ prepares the execution, forks and monitors; we also drop our hold on the process whatever happened.
        try:
            super().execute_job(job, queue)
        finally:
            self.job_done()


def become_work_horse(handoff: dict[str, Any], connection: Redis) -> None:
    """In the process a ``HandOffWorker`` handed a job to: become RQ's work-horse for it, as a fork of that worker
    would be (exits the process, as RQ's horse does; with status 1 if the worker ended meanwhile)."""
    # RQ's horse is a fork and inherits its worker; ours rebuilds it from its Redis record (RQ's find_by_key).
    worker = Worker.find_by_key(handoff["worker_key"], connection=connection)
    if worker is None:
        sys.exit(1)
    job = Job.fetch(handoff["job_id"], connection=connection)
    execution = Execution.fetch(handoff["execution_id"], job.id, connection=connection)
    # RQ's Execution fetches its job lazily into a private slot; we give it the job fetched above, one object as in
    # RQ's fork.
    execution._job = job
    # RQ's execute_job sets the worker's execution before forking; the rebuilt worker gets it here.
    worker.execution = execution
    worker.main_work_horse(job, Queue(handoff["queue"], connection=connection))
