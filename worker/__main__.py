"""``python -m worker``: one RQ worker on the edit queue (run several for more throughput).

Why RQ's default forking ``Worker``: every job runs in a fresh child (the work-horse), so a crash
or out-of-memory kills one job and not the worker, and memory is returned after each job. The
parent imports torch and the engine *before* forking, so a horse starts in milliseconds, but it
never initialises CUDA: CUDA cannot be used in a child forked after the parent initialised it.
Each horse picks CUDA when present (``gif.edit.default_device``), CPU otherwise.
The parent also runs one tiny edit on the CPU before its first job (``warm_up``), so the engine's
lazy imports are done once and not in every horse. It does so on one thread: a child forked
after OpenMP ran in several threads hangs on its first parallel operation.
If a horse dies, the parent marks its job failed (retryable) at once; if the whole worker dies,
the API's reaper does so once the job's heartbeat expires.
"""

from __future__ import annotations

import logging
import os
import socket

import torch
from rq import Worker

from gif.architectures import build_model
from gif.data import Dataset
from gif.edit import run
from gif.spec import JobSpec
from service.errors import job_error
from service.logs import configure_logging, job_context
from service.settings import Settings
from worker.tasks import context

log = logging.getLogger("worker")


def on_horse_killed(job, retpid: int, ret_val: int, rusage: object) -> None:
    """The child running a job died (killed, out of memory, or stopped past its time limit)."""
    with job_context(job.id):
        error = job_error("worker-lost", f"the process running the job died (wait status {ret_val}); submit it again",
                          retryable=True)
        if context().jobs.fail(job.id, error):
            log.warning("job's process died; marked failed")


def warm_up() -> None:
    """One tiny edit on the CPU, single-threaded (see the module docstring), so that horses start warm."""
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    model = build_model({"name": "mlp", "config": {"sizes": [4, 8, 3]}})
    data = Dataset(torch.randn(90, 4, generator=generator), torch.arange(90) % 3)
    spec = JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [0]}, "solver": {"max_iterations": 2}})
    run(spec, model, data, data, device="cpu")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    warm_up()
    ctx = context()
    worker = Worker(
        [ctx.queue], connection=ctx.queue.connection, name=f"gif-{socket.gethostname()}-{os.getpid()}",
        work_horse_killed_handler=on_horse_killed,
    )
    log.info("worker ready", extra={"queue": settings.queue_name})
    worker.work(with_scheduler=False, logging_level=settings.log_level)


if __name__ == "__main__":
    main()
