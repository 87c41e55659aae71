"""``python -m worker.runner``: the RQ worker of one device, which never imports torch.

Why not RQ's forking horse: a child forked from a parent that ran any torch work may fail to use
CUDA (``initialization error``), even when the parent never initialised CUDA itself. RQ's spawning
horse is safe but pays an interpreter start and the engine's imports (seconds) on every job.
So each job runs in a *standby horse*: a fresh interpreter (``worker.horse``) started while the worker
is idle, which loads the engine and warms up on the device, then waits on its stdin for one job.
When RQ hands the worker a job, the standby receives it and becomes RQ's work-horse; RQ's parent
loop watches it as it would a forked one (time limit, cancel, death). The next standby starts at once,
beside the running job, so that back-to-back jobs also start warm (it costs the running job a couple of
CPU-seconds of imports, and on a GPU one more CUDA context while they overlap). Every job gets a
process that no earlier job or parent touched; a crash, a CUDA error or an out-of-memory kill costs
that job only (failed, retryable), never the worker.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

from rq import Worker

from service.core.errors import job_error
from service.core.logs import configure_logging, job_context
from service.core.processes import stop
from service.core.settings import Settings
from worker import context

log = logging.getLogger("worker.runner")
HORSE_ARGS = (sys.executable, "-m", "worker.horse")
PARENT_PID_ENV = "GIF_HORSE_PARENT_PID"


def on_horse_killed(job, retpid: int, ret_val: int, rusage: object) -> None:
    """The process running a job died (killed, out of memory, a crash, or stopped past its time limit)."""
    with job_context(job.id):
        error = job_error(
            "worker-lost", f"the process running the job died (wait status {ret_val}); submit it again", retryable=True
        )
        if context().jobs.fail(job.id, error):
            log.warning("job's process died; marked failed")


class StandbyHorseWorker(Worker):
    """RQ's worker, with each job run by a pre-started fresh interpreter instead of a fork of this process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.standby: subprocess.Popen | None = None
        self.running_horse: subprocess.Popen | None = None

    def start_standby(self) -> None:
        """Start the next horse now, so that it is warm when a job comes."""
        if self.standby is None or self.standby.poll() is not None:
            env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
            # its own session: RQ stops a horse by signalling its process group
            self.standby = subprocess.Popen(HORSE_ARGS, env=env, stdin=subprocess.PIPE, start_new_session=True)

    def fork_work_horse(self, job, queue) -> None:
        self.start_standby()  # a no-op unless the standby died while waiting
        horse, self.standby = self.standby, None
        assert horse is not None and horse.stdin is not None
        assert self.execution is not None  # RQ prepared it before forking
        handoff = {"worker_key": self.key, "job_id": job.id, "queue": queue.name, "execution_id": self.execution.id}
        try:
            horse.stdin.write(json.dumps(handoff).encode() + b"\n")
            horse.stdin.close()
        except BrokenPipeError:
            pass  # the horse died just now; RQ's monitor sees it exit and fails the job
        # Keep the Popen referenced until RQ has reaped the horse: a dropped one that is still running would be
        # polled (and reaped) by subprocess's clean-up when the next standby starts, before RQ's wait4 sees it.
        self.running_horse = horse
        self._horse_pid = horse.pid
        self.procline(f"Handed job {job.id} to horse {horse.pid}")
        self.start_standby()

    def execute_job(self, job, queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            self.running_horse = None  # RQ reaped it

    def stop_standby(self) -> None:
        if self.standby is not None:
            stop(self.standby)
            self.standby = None


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    ctx = context()
    worker = StandbyHorseWorker(
        [ctx.queue],
        connection=ctx.queue.connection,
        name=f"gif-{socket.gethostname()}-{os.getpid()}-{settings.worker_device.replace(':', '')}",
        work_horse_killed_handler=on_horse_killed,
    )
    worker.start_standby()
    log.info("worker ready", extra={"queue": settings.queue_name, "device": settings.worker_device})
    try:
        worker.work(with_scheduler=False, logging_level=settings.log_level)
    finally:
        worker.stop_standby()


if __name__ == "__main__":
    main()
