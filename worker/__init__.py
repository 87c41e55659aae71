"""The edit worker: a supervisor keeps one RQ worker per device alive; each runs every job in a fresh
interpreter (a standby work-horse, warmed up before the job arrives) through ``worker.tasks.run_job``.

Processes, from the top (only the last one imports torch):
- ``python -m worker`` (``worker.supervisor``): picks the devices, runs one RQ worker per device, restarts
  one that dies (with back-off) and reaps lost jobs, so that they are found even when no API runs.
- ``python -m worker.runner`` (``worker.runner.EditWorker``): the RQ worker of one device; it takes job ids off
  the queue and hands each to a standby horse, and fails the job as retryable if the horse dies.
- ``python -m worker.horse`` (``worker.horse``): a fresh interpreter that loads the engine, warms up on its
  device, waits for one job, runs it and exits. No torch state (CUDA's above all) is ever inherited.

What the RQ worker and its horse need of RQ's internals is in ``service.core.rq_internals``.
Importing this package has no side effects.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from functools import lru_cache

from service.core.context import ServiceContext
from service.core.settings import Settings


def set_openmp_policy(environ: MutableMapping[str, str]) -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` unless it is set: the environment of a process that will load
    torch (and OpenMP with it, which reads it once, as it loads). Idle OpenMP threads then sleep instead of spinning:
    a worker shares its cores with the API, other workers or anything else, and spinning threads made small edits
    5-50x slower on a busy machine. The RQ worker sets it for each job process it starts."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@lru_cache(maxsize=1)
def context() -> ServiceContext:
    """The record, storage and queue layer of this process, built once from the environment."""
    return ServiceContext.create(Settings())
