"""``python -m worker``: one RQ worker per device, kept alive, and the lost-job reaper of this host.

``GIF_WORKER_DEVICE`` picks the devices: ``cpu``; ``cuda:N``; ``cuda`` (every visible GPU) or ``auto``
(every visible GPU, else the CPU). Each device gets its own ``worker.runner`` process with
``GIF_WORKER_DEVICE`` set to that one device; one that dies is restarted with back-off. The GPUs are
counted in a short-lived interpreter, so this process never imports torch (and never touches CUDA).
A setting this host cannot honour (``cuda`` without a GPU) is not retried in silence: the supervisor stays up,
runs no worker, logs why and lists itself as an unhealthy worker (``/v1/workers``, ``/readyz`` degraded).
The reaper pass (``service.core.reaper``) runs here too, so lost jobs are failed or re-enqueued even on a
deployment where no API process is up.
"""

from __future__ import annotations

import glob
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from functools import partial

from service.core.fleet import new_worker_info
from service.core.logs import configure_logging
from service.core.processes import Supervised, spawn
from service.core.reaper import reap
from service.core.settings import Settings
from worker import context

log = logging.getLogger("worker.supervisor")
RUNNER_ARGS = (sys.executable, "-m", "worker.runner")
CHECK_INTERVAL_S = 0.5
COUNT_GPUS = "from gif.devices import visible_cuda_devices; print(visible_cuda_devices())"


def visible_gpus() -> int:
    """CUDA devices this host's processes can use, counted in a child interpreter (cheap where no NVIDIA device node
    exists, which is every CPU-only host)."""
    if not glob.glob("/dev/nvidia[0-9]*") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        return 0
    try:
        out = subprocess.run(
            [sys.executable, "-c", COUNT_GPUS], capture_output=True, text=True, timeout=120, check=True
        )
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("could not count the GPUs (%s); using the CPU", exc)
        return 0


class DeviceSettingError(Exception):
    """``GIF_WORKER_DEVICE`` names a device this host does not have."""


def worker_devices(setting: str) -> list[str]:
    """The device of each RQ worker to run for a ``GIF_WORKER_DEVICE`` value; a GPU that is not there is a
    ``DeviceSettingError`` (rather than failing every job)."""
    if setting == "cpu":
        return [setting]
    gpus = visible_gpus()
    if setting.startswith("cuda:"):
        if int(setting.split(":")[1]) >= gpus:
            raise DeviceSettingError(f"GIF_WORKER_DEVICE={setting}, but {gpus} CUDA device(s) are visible")
        return [setting]
    if gpus:
        return [f"cuda:{index}" for index in range(gpus)]
    if setting == "cuda":
        raise DeviceSettingError("GIF_WORKER_DEVICE=cuda, but no CUDA device is visible")
    return ["cpu"]


def report_unusable(settings: Settings, reason: str, stopped: threading.Event) -> None:
    """Stay up without workers, listed as unhealthy with ``reason`` until stopped (a restart would not help)."""
    fleet = context().fleet
    info = new_worker_info(
        f"gif-{socket.gethostname()}-{os.getpid()}-supervisor", os.getpid(), settings.queue_name, settings.worker_device
    ).model_copy(update={"state": "unhealthy", "reason": reason})
    log.error("no worker started: %s; fix GIF_WORKER_DEVICE and restart", reason)
    fleet.publish(info)
    fleet.publish_until(stopped, lambda: info, settings.heartbeat_interval_s)


def start_runner(device: str) -> subprocess.Popen:
    """The RQ worker of ``device``; killed outright if this supervisor dies, as its horse is if it dies, so that
    a dead worker host leaves its jobs to the reaper rather than to half-alive processes."""
    return spawn(RUNNER_ARGS, {**os.environ, "GIF_WORKER_DEVICE": device}, death_signal=signal.SIGKILL)


def reap_forever(stopped: threading.Event, interval_s: float) -> None:
    ctx = context()
    while not stopped.wait(interval_s):
        try:
            reap(ctx)
        except Exception:
            log.exception("the lost-job reaper failed; retrying")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    threading.Thread(
        target=reap_forever, args=(stopped, settings.reaper_interval_s), name="reaper", daemon=True
    ).start()
    try:
        devices = worker_devices(settings.worker_device)
    except DeviceSettingError as exc:
        report_unusable(settings, str(exc), stopped)
        return
    runners = [
        Supervised(f"worker on {device}", partial(start_runner, device), log, cold_restop=True) for device in devices
    ]
    log.info("workers started", extra={"devices": devices, "pids": [r.pid for r in runners]})
    while not stopped.wait(CHECK_INTERVAL_S):
        for runner in runners:
            runner.check()
    for runner in runners:  # RQ's cold shutdown: a running job is stopped; the reaper fails it later
        runner.stop()


if __name__ == "__main__":
    main()
