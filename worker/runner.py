"""``python -m worker.runner``: the RQ worker of one device, which never imports torch.

Why not RQ's forking horse: a child forked from a parent that ran any torch work may fail to use
CUDA (``initialization error``), even when the parent never initialised CUDA itself. RQ's spawning
horse is safe but pays an interpreter start and the engine's imports (seconds) on every job.
So each job runs in a *standby horse*: a fresh interpreter (``worker.horse``) started ahead of its job.
It loads the engine at once, but opens the device only when told to (``warm``): on a GPU, never while
another job's process holds the device's memory (a standby that warmed up beside a long job once died of
CUDA's out-of-memory). The worker takes a job off the queue only once its standby is warm, so a standby that
fails its warm-up never takes a job; after ``GIF_WORKER_WARMUP_ATTEMPTS`` failures in a row the worker marks
its device unhealthy (``/v1/workers``, ``/readyz``) and tries again after a back-off.

When RQ hands the worker a job, the standby receives it and becomes RQ's work-horse; RQ's parent loop
watches it as it would a forked one (time limit, cancel, death). Every job gets a process that no earlier
job or parent touched; a crash, a CUDA error or an out-of-memory kill costs that attempt only: the job is
queued again, and failed with the cause (exit status or signal, the last line its process wrote to stderr)
once it has had ``GIF_JOB_MAX_ATTEMPTS`` attempts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from rq import Queue
from rq.job import Job

from service.core.fleet import WorkerInfo, WorkerState, device_info, new_worker_info
from service.core.logs import configure_logging, job_context
from service.core.processes import stop
from service.core.queue import enqueue_again
from service.core.rq_internals import HandOffWorker
from service.core.settings import Settings
from service.core.webhooks import notify_end
from worker import context, set_openmp_policy

log = logging.getLogger("worker.runner")
HORSE_ARGS = (sys.executable, "-m", "worker.horse")
PARENT_PID_ENV = "GIF_HORSE_PARENT_PID"
POLL_S = 1.0


class HorseFailed(Exception):
    """A job process died, or said nothing in time, before it was ready for a job; the message says why."""


def describe_exit(wait_status: int) -> str:
    """A raw wait status (``os.wait4``) in words."""
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        with contextlib.suppress(ValueError):
            return f"killed by signal {number} ({signal.Signals(number).name})"
        return f"killed by signal {number}"
    return f"exited with status {os.WEXITSTATUS(wait_status)}"


def plain_words(line: str) -> str:
    """A line of stderr as a person would quote it: a JSON log entry (``service.core.logs``) by its message and the
    last line of its exception."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "message" not in entry:
        return line
    exception = str(entry.get("exception") or "").strip().splitlines()
    return f"{entry['message']}" + (f" ({exception[-1]})" if exception else "")


class Horse:
    """A job process started ahead of its job: JSON commands go to its stdin, JSON events come from its stdout, and
    its stderr is passed through to the worker's, the last line kept as its last words."""

    def __init__(self, env: dict[str, str]):
        # its own session: RQ stops a horse by signalling its process group
        self.process = subprocess.Popen(
            HORSE_ARGS,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.last_words = ""
        self.warm_sent = False
        self.warm_on: dict[str, Any] | None = None  # the device it reported once warm
        assert self.process.stdout is not None and self.process.stderr is not None
        self.readers = [
            threading.Thread(target=self._read_events, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._pass_stderr, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_events(self, stream: IO[bytes]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put(None)  # end of file: the process is gone

    def _pass_stderr(self, stream: IO[bytes]) -> None:
        for line in stream:
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
            if text := line.decode(errors="replace").strip():
                self.last_words = plain_words(text)

    def send(self, command: dict[str, Any]) -> bool:
        """Write one command; False if the process is gone."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            self.process.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def last_line(self) -> str:
        """What the process wrote last to stderr, once it has all been read (it is dead, or soon)."""
        self.readers[1].join(timeout=2.0)
        return self.last_words

    def await_event(self, name: str, timeout_s: float, keep_alive: Callable[[], None]) -> dict[str, Any]:
        """The next ``name`` event; raises ``HorseFailed`` if the process ends or stays silent past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            keep_alive()
            try:
                event = self.events.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if event is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=5.0)
                status = self.process.returncode
                how = f"signal {-status}" if status is not None and status < 0 else f"status {status}"
                raise HorseFailed(f"its process ended ({how}): {self.last_line() or 'it wrote nothing'}")
            if event.get("event") == name:
                return event
        self.stop()
        raise HorseFailed(f"its process was not {name} within {timeout_s:g} s and was stopped")

    def stop(self) -> None:
        stop(self.process)


class EditWorker(HandOffWorker):
    """The RQ worker of one device: each job is run by a pre-started fresh interpreter (a standby ``Horse``) instead
    of a fork of this process (RQ's hooks are overridden in ``service.core.rq_internals``)."""

    def __init__(self, *args, settings: Settings, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.standby: Horse | None = None
        self.running_horse: Horse | None = None
        self.requeue_job_id: str | None = None
        self.warmup_failures = 0
        self.info: WorkerInfo = new_worker_info(self.name, os.getpid(), settings.queue_name, settings.worker_device)
        self.device_is_shared = settings.worker_device == "cpu"  # the CPU's memory is no one job's

    # --- the fleet record ----------------------------------------------------------------------

    def publish(self, state: WorkerState, **changes: Any) -> None:
        self.info = self.info.model_copy(update={"state": state, **changes})
        context().fleet.publish(self.info)

    # --- standby horses --------------------------------------------------------------------------

    def start_standby(self) -> Horse:
        """The next horse, started now so that its imports are done when a job comes (warmed on the device only
        where no running job's process holds it)."""
        if self.standby is None or self.standby.process.poll() is not None:
            env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
            set_openmp_policy(env)  # before the horse imports torch
            self.standby = Horse(env)
        if not self.standby.warm_sent and (self.device_is_shared or self.running_horse is None):
            self.standby.warm_sent = self.standby.send({"command": "warm"})
        return self.standby

    def ready_standby(self) -> None:
        """Return once a standby is warm on the device; while standbys keep failing their warm-up, the device is
        marked unhealthy and tried again after a back-off that doubles (interrupted by a stop request)."""
        retry_s = self.settings.worker_unhealthy_retry_s
        while True:
            horse = self.start_standby()
            if horse.warm_on is not None and horse.process.poll() is None:
                return
            if self.info.state != "unhealthy":
                self.publish("warming", job_id=None)
            try:
                horse.warm_on = horse.await_event("warm", self.settings.worker_warmup_timeout_s, self.heartbeat)[
                    "device"
                ]
            except HorseFailed as exc:
                horse.stop()
                self.standby = None
                self.warmup_failures += 1
                log.warning("a job process failed its warm-up (%d in a row): %s", self.warmup_failures, exc)
                if self.warmup_failures >= self.settings.worker_warmup_attempts:
                    count = self.warmup_failures
                    processes = "a job process" if count == 1 else f"{count} job processes in a row"
                    reason = f"{processes} failed the warm-up on {self.settings.worker_device}; the last: {exc}"
                    self.publish("unhealthy", reason=reason, job_id=None)
                    log.error("device unhealthy; trying again in %.0f s: %s", retry_s, reason)
                    self.wait_alive(retry_s)
                    retry_s = min(retry_s * 2, 10 * self.settings.worker_unhealthy_retry_s)
                continue
            self.warmup_failures = 0
            self.publish("idle", device=device_info(horse.warm_on), reason=None, job_id=None)
            return

    def wait_alive(self, seconds: float) -> None:
        """Sleep, keeping RQ's worker record alive (a stop signal interrupts it with RQ's ``StopRequested``)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.heartbeat()
            time.sleep(min(POLL_S, left))

    def stop_standby(self) -> None:
        if self.standby is not None:
            self.standby.stop()
            self.standby = None

    # --- the hand-off's hooks (service.core.rq_internals.HandOffWorker) ---------------------------

    def before_dequeue(self) -> None:
        self.ready_standby()  # no job is taken before a process is warm to run it

    def job_taken(self, job: Job) -> None:
        context().jobs.note_attempt(job.id)

    def start_job_process(self, job: Job, handoff: dict[str, Any]) -> int:
        horse = self.start_standby()  # the warm one, unless it died since
        self.standby = None
        horse.send({"command": "run", **handoff})  # if it died just now, RQ's monitor sees it exit
        # Keep the horse referenced until RQ has reaped it: a dropped Popen that is still running would be polled
        # (and reaped) by subprocess's clean-up when the next standby starts, before RQ's wait4 sees it.
        self.running_horse = horse
        return horse.pid

    def job_process_started(self, job: Job, pid: int) -> None:
        self.procline(f"Handed job {job.id} to horse {pid}")
        self.publish("running", job_id=job.id)
        self.start_standby()  # imports only, on a GPU: it opens the device once this job's process is gone

    def job_process_died(self, job: Job, wait_status: int) -> None:
        """The process running a job died (killed, out of memory, a crash, or stopped past its time limit): the job
        runs again, or fails with the cause once it has had its attempts."""
        horse = self.running_horse
        words = horse.last_line() if horse is not None else ""
        cause = f"the process running the job died ({describe_exit(wait_status)})" + (
            f"; its last words: {words}" if words else ""
        )
        with job_context(job.id):
            outcome = context().jobs.retry_or_fail(job.id, cause, self.settings.job_max_attempts)
            if outcome == "requeued":
                self.requeue_job_id = job.id  # after RQ has recorded this attempt's failure
                log.warning("job's process died; queued again: %s", cause)
            elif outcome == "failed":
                log.warning("job's process died; failed: %s", cause)
                notify_end(context(), job.id)

    def job_process_reaped(self, queue: Queue) -> None:
        if self.requeue_job_id is not None:
            enqueue_again(queue, self.requeue_job_id, self.settings.job_timeout_s)
            self.requeue_job_id = None

    def job_done(self) -> None:
        self.running_horse = None  # RQ reaped it
        self.info = self.info.model_copy(update={"jobs_done": self.info.jobs_done + 1})


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    ctx = context()
    rq_worker = EditWorker(
        [ctx.queue],
        connection=ctx.queue.connection,
        name=f"gif-{socket.gethostname()}-{os.getpid()}-{settings.worker_device.replace(':', '')}",
        settings=settings,
    )
    stopped = threading.Event()
    heartbeat = threading.Thread(
        target=ctx.fleet.publish_until,
        args=(stopped, lambda: rq_worker.info, settings.heartbeat_interval_s),
        name="fleet-heartbeat",
        daemon=True,
    )
    heartbeat.start()
    rq_worker.publish("warming")
    rq_worker.start_standby()
    log.info("worker ready", extra={"queue": settings.queue_name, "device": settings.worker_device})
    try:
        rq_worker.work(with_scheduler=False, logging_level=settings.log_level)
    finally:
        stopped.set()
        rq_worker.stop_standby()
        heartbeat.join(timeout=5.0)  # it withdraws the record


if __name__ == "__main__":
    main()
