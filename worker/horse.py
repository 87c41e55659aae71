"""``python -m worker.horse``: a standby work-horse, started by ``worker.runner`` before its job exists.

It imports the engine and runs a tiny edit on the CPU at once (lazy imports, no device), then says ``ready`` and
waits for commands on stdin, one JSON line each: ``warm`` opens its device and runs the tiny edit there (on a
GPU: CUDA's context, allocator and libraries), then says ``warm`` with the device's description; ``run`` names the
RQ worker, job, queue and execution, which it runs as RQ's work-horse would, and exits. Its events go to stdout,
one JSON line each; anything else written to stdout is sent to stderr. A warm-up that fails ends the process with
the error as its last line on stderr, before it ever sees a job. If its worker dies first, the horse is killed with
it (``PR_SET_PDEATHSIG``) or sees end-of-file on stdin, and exits without a job. Its OpenMP policy comes with the
environment its worker starts it with (``worker.set_openmp_policy``): this module loads torch as it is imported.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import IO

from gif.devices import device_report, resolve_device
from service.core.logs import configure_logging
from service.core.processes import die_with_parent
from service.core.rq_internals import become_work_horse
from service.core.settings import Settings
from worker import context
from worker.runner import PARENT_PID_ENV
from worker.tasks import warm_up


def event_channel() -> IO[str]:
    """This process's stdout as the channel of its events; ``sys.stdout`` (and fd 1) go to stderr from now on, so
    that a stray print cannot garble an event."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def main() -> None:
    die_with_parent(signal.SIGKILL)
    if str(os.getppid()) != os.environ.get(PARENT_PID_ENV):
        return  # the worker died before the line above took effect
    events = event_channel()
    settings = Settings()
    configure_logging(settings.log_level)
    warm_up("cpu")
    events.write(json.dumps({"event": "ready"}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        if command["command"] == "warm":
            device = resolve_device(settings.worker_device)
            if device.type != "cpu":
                warm_up(settings.worker_device)
            events.write(json.dumps({"event": "warm", "device": device_report(device)}) + "\n")
        elif command["command"] == "run":
            become_work_horse(command, context().queue.connection)
            return


if __name__ == "__main__":
    main()
