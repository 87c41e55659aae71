"""``python -m worker.horse``: a standby work-horse, started by ``worker.runner`` before its job exists.

It imports the engine and warms up on its device (so a job starts in milliseconds, not seconds), then
reads one line from stdin: the RQ worker, job, queue and execution to run. It runs that job as RQ's
work-horse would and exits. If its worker dies first, the horse is killed with it (``PR_SET_PDEATHSIG``)
or sees end-of-file on stdin, and exits without a job.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job

from service.core.logs import configure_logging
from service.core.processes import die_with_parent
from service.core.settings import Settings
from worker import context
from worker.runner import PARENT_PID_ENV
from worker.tasks import warm_up


def run_handoff(handoff: dict[str, str]) -> None:
    """Become RQ's work-horse for the job in ``handoff`` (exits the process, as RQ's horse does)."""
    connection = context().queue.connection
    worker = Worker.find_by_key(handoff["worker_key"], connection=connection)
    if worker is None:  # the worker ended meanwhile
        sys.exit(1)
    job = Job.fetch(handoff["job_id"], connection=connection)
    execution = Execution.fetch(handoff["execution_id"], job.id, connection=connection)
    execution._job = job
    worker.execution = execution
    worker.main_work_horse(job, Queue(handoff["queue"], connection=connection))


def main() -> None:
    die_with_parent(signal.SIGKILL)
    if str(os.getppid()) != os.environ.get(PARENT_PID_ENV):
        return  # the worker died before the line above took effect
    settings = Settings()
    configure_logging(settings.log_level)
    warm_up(settings.worker_device)
    line = sys.stdin.readline()
    if line:
        run_handoff(json.loads(line))


if __name__ == "__main__":
    main()
