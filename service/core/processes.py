"""Child processes for the launcher and the worker supervisor: start them, stop them, keep them alive.

Children run in their own sessions (terminal signals reach the parent only) and die with their parent
on Linux (``PR_SET_PDEATHSIG``), so killing a launcher or a worker supervisor leaves nothing behind.
``Supervised`` restarts a child that exited, with exponential back-off and a log line for each restart.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

STOP_GRACE_S = 10.0
RQ_COLD_SHUTDOWN_DELAY_S = 1.2  # RQ ignores a second stop signal within one second of the first
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform == "linux" else None


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies (a no-op elsewhere)."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signum)


def spawn(
    args: Sequence[str], env: dict[str, str] | None = None, death_signal: int = signal.SIGTERM, **kwargs
) -> subprocess.Popen:
    """A child in its own session that receives ``death_signal`` when this process dies."""
    return subprocess.Popen(
        list(args),
        env=env,
        start_new_session=True,
        preexec_fn=(lambda: die_with_parent(death_signal)) if _libc is not None else None,
        **kwargs,
    )


def stop(process: subprocess.Popen, cold_restop: bool = False) -> None:
    """SIGTERM (twice for an RQ worker: the second is its cold shutdown, which stops a running job), then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    if cold_restop:
        try:
            process.wait(RQ_COLD_SHUTDOWN_DELAY_S)
            return
        except subprocess.TimeoutExpired:
            process.terminate()
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Supervised:
    """A child kept running: when it exits it is started again after a back-off that doubles with each quick
    death (``first_delay_s`` up to ``max_delay_s``) and resets once the child has stayed up ``stable_s``."""

    def __init__(
        self,
        name: str,
        start: Callable[[], subprocess.Popen],
        log: logging.Logger,
        cold_restop: bool = False,
        first_delay_s: float = 1.0,
        max_delay_s: float = 30.0,
        stable_s: float = 60.0,
    ):
        self.name, self.start, self.log, self.cold_restop = name, start, log, cold_restop
        self.first_delay_s, self.max_delay_s, self.stable_s = first_delay_s, max_delay_s, stable_s
        self.delay_s = first_delay_s
        self.restarts = 0
        self.restart_at: float | None = None
        self.process = start()
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    def check(self) -> None:
        """Call regularly: notices an exit, and restarts the child once its back-off has passed."""
        now = time.monotonic()
        if self.restart_at is None:
            if self.process.poll() is None:
                return
            if now - self.started_at >= self.stable_s:
                self.delay_s = self.first_delay_s
            self.restart_at = now + self.delay_s
            self.log.warning(
                "the %s (pid %d) exited with status %s; restarting in %.0f s",
                self.name,
                self.process.pid,
                self.process.returncode,
                self.delay_s,
                extra={"child": self.name, "status": self.process.returncode, "delay_s": self.delay_s},
            )
            self.delay_s = min(self.delay_s * 2, self.max_delay_s)
        elif now >= self.restart_at:
            self.restart_at = None
            self.process = self.start()
            self.started_at = now
            self.restarts += 1
            self.log.warning(
                "the %s was restarted (pid %d)",
                self.name,
                self.process.pid,
                extra={"child": self.name, "pid": self.process.pid, "restarts": self.restarts},
            )

    def stop(self) -> None:
        self.restart_at = None
        stop(self.process, self.cold_restop)
