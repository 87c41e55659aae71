"""A real stack for the benchmarks and the tests: started, watched, loaded and waited on.

- ``start_stack``: Redis, ``python -m worker`` and ``python -m service`` on free ports with throwaway storage (their
  stderr to a log file), the demo model and data uploaded; ``launched``: ``make run``'s launcher
  (``python -m service.tools.launch``) in a directory of its own, its stderr tailed (``Launched.wait_for`` a line).
  tests/service/test_launch.py drives the launcher through ``launched`` too.
- ``upload_demo``: what ``gif.demo.write_demo_assets`` wrote, uploaded through the users' client; ``in_process``:
  the same demo edit in this process, to compare a job with.
- ``wait_for_job``: every wait on a benchmark's job is bounded (``JobFailed`` when it fails or never ends).
- ``poll``: connections polling a path of the API at an interval or in a closed loop, ``latency_summary`` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gif_client import Client

from gif.demo import write_demo_assets
from gif.edit import run
from gif.io.datasets import read_dataset
from gif.models.checkpoints import load_checkpoint
from gif.spec import JobSpec
from service.core.settings import Settings
from service.tools.launch import api_process, free_port, redis_for, wait_until_healthy, worker_process
from service.tools.local_s3 import CREDENTIALS

# --- the demo, through the service and in this process ------------------------------------------------------------


def upload_demo(client: Client, directory: str | Path) -> dict[str, str]:
    """Upload what ``gif.demo.write_demo_assets`` wrote; returns the ids as a job body names them."""
    directory = Path(directory)
    architecture = json.loads((directory / "architecture.json").read_text())
    return {
        "model_id": client.upload_model(directory / "model.safetensors", architecture)["id"],
        "train_dataset_id": client.upload_dataset(directory / "train.safetensors")["id"],
        "eval_dataset_id": client.upload_dataset(directory / "eval.safetensors")["id"],
    }


def demo_body(client: Client, directory: Path) -> dict[str, Any]:
    """The demo job's body (``job.json``) with the demo's model and data uploaded."""
    return {**json.loads((directory / "job.json").read_text()), **upload_demo(client, directory)}


def in_process(
    demo: Path, spec: JobSpec, runs: int, device: torch.device | str | None = None
) -> dict[str, list[float]]:
    """The same edit with gif.edit.run in this process (on ``device``, default auto), ``runs`` times after a cold
    first run: loading, and the edit itself."""
    times: dict[str, list[float]] = {"load_s": [], "edit_s": []}
    architecture = json.loads((demo / "architecture.json").read_text())
    for _ in range(runs + 1):
        started = time.perf_counter()
        model = load_checkpoint(architecture, demo / "model.safetensors")
        train, held_out = read_dataset(demo / "train.safetensors"), read_dataset(demo / "eval.safetensors")
        loaded = time.perf_counter()
        run(spec, model, train, held_out, device=device)
        times["load_s"].append(loaded - started)
        times["edit_s"].append(time.perf_counter() - loaded)
    return times


# --- jobs through the service: every wait is bounded -----------------------------------------------------------

JOB_TIMEOUT_S = float(os.environ.get("GIF_BENCH_JOB_TIMEOUT_S", 900))  # no benchmark job takes longer


class JobFailed(RuntimeError):
    """A benchmark's job ended without succeeding, or did not end in time; the message says how."""


def wait_for_job(
    api: Any,
    job_id: str,
    timeout_s: float = JOB_TIMEOUT_S,
    until: tuple[str, ...] = ("succeeded",),
    poll_s: float = 0.05,
) -> dict:
    """The job once its status is one of ``until`` (default: succeeded). ``JobFailed`` when it ends otherwise
    (failed or cancelled, with its error) or is not there within ``timeout_s`` (it is then cancelled, so that it
    does not hold the worker): a benchmark never waits for ever on a job that cannot end."""
    try:
        job = api.wait(job_id, progress=False, poll_s=poll_s, timeout_s=timeout_s, until=until)
    except TimeoutError:
        with contextlib.suppress(Exception):
            api.cancel(job_id)
        try:
            status = api.job(job_id)["status"]
        except Exception:  # the service itself may be what is stuck
            status = "unknown"
        raise JobFailed(f"job {job_id} is still {status} after {timeout_s:.0f} s (cancelled)") from None
    if job["status"] not in until:
        error = job.get("error") or {}
        raise JobFailed(f"job {job_id} {job['status']}: {error.get('code')}: {error.get('detail')}")
    return job


# --- a stack of its own: Redis, a worker, the API ---------------------------------------------------------------


@dataclass
class Stack:
    """A real stack started by ``start_stack``: the API's client, the demo job's body and where things are."""

    api: Client
    body: dict
    demo: Path
    base: str
    redis_url: str
    port: int
    api_pid: int


def start_stack(stack: ExitStack, workdir: Path, worker_device: str = "auto", **settings_given: Any) -> Stack:
    """Redis, ``python -m worker`` (on ``worker_device``: its ``GIF_WORKER_DEVICE``) and ``python -m service`` on
    free ports with throwaway storage under ``workdir`` and any other ``settings_given`` (S3 storage, API keys:
    the stack's client uses the first), the demo model and data uploaded; everything stops with ``stack``."""
    url = stack.enter_context(redis_for(workdir / "redis"))
    tag = f"bench-{secrets.token_hex(4)}"
    settings = Settings(
        redis_url=url,
        key_prefix=tag,
        queue_name=tag,
        storage_dir=workdir / "artifacts",
        port=free_port(),
        worker_device=worker_device,
        **settings_given,
    )
    env = {**os.environ, **CREDENTIALS, **settings.as_env()}
    logs = stack.enter_context(open(workdir / "stack.log", "wb"))  # noqa: SIM115 -- closed with the stack
    stack.enter_context(worker_process(env, stderr=logs))
    api_proc = stack.enter_context(api_process(env, stderr=logs))
    base = f"http://127.0.0.1:{settings.port}"
    wait_until_healthy(base + "/healthz", api_proc)
    demo = workdir / "demo"
    write_demo_assets(demo)
    api = stack.enter_context(Client(base, api_key=settings.api_keys[0] if settings.api_keys else None))
    return Stack(api, demo_body(api, demo), demo, base, url, settings.port, api_proc.pid)


# --- ``make run``'s launcher, its stderr tailed ----------------------------------------------------------------

READY = re.compile(r"ready on (\S+) .*Redis (\S+); worker pid (\d+), api pid (\d+)")
RESTARTED = re.compile(r"the worker was restarted \(pid (\d+)\)")
REDIS_RESTARTED = re.compile(r"the Redis was restarted \(pid (\d+)\)")
LAUNCH_TIMEOUT_S = 120.0
LAUNCHER_STOP_S = 60.0


@dataclass
class Launched:
    """``python -m service.tools.launch`` (``make run``) running in a directory of its own: what it has printed on
    stderr so far and, once it is ready, its URL, its Redis and its worker's and API's pids."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    base: str = ""
    redis_url: str = ""
    worker_pid: int = 0
    api_pid: int = 0

    def wait_for(self, pattern: re.Pattern, timeout_s: float = LAUNCH_TIMEOUT_S) -> re.Match:
        """The first line of the launcher's stderr that matches, once there is one; ``RuntimeError`` with the
        last lines if the launcher exits first or none comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not (found := next((m for m in map(pattern.search, list(self.lines)) if m), None)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {self.process.returncode}" if self.process.poll() is not None else "running"
                raise RuntimeError(f"the launcher ({state}) printed no {pattern.pattern!r}:\n{self.tail()}")
            time.sleep(0.05)
        return found

    def tail(self, lines: int = 20) -> str:
        return "".join(self.lines[-lines:])


def launcher_env(port: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for the launcher on ``port``, without REDIS_URL: it starts its own Redis."""
    base = {k: v for k, v in (env or os.environ).items() if k not in ("REDIS_URL", "GIF_REDIS_URL")}
    return {**base, "GIF_PORT": str(port)}


@contextmanager
def launched(workdir: Path, worker_device: str | None = None, env: dict[str, str] | None = None) -> Iterator[Launched]:
    """``make run``'s launcher with ``env``'s settings (default: this process's) but a free ``GIF_PORT``, its own
    Redis (``var/redis``) and artifacts under ``workdir`` (its working directory), and ``GIF_WORKER_DEVICE`` when
    ``worker_device`` is given; ready when it says so (its URL, Redis and pids read from that line); stopped with
    Ctrl-C (SIGINT) on exit, its exit status then in ``process.returncode``."""
    workdir.mkdir(parents=True, exist_ok=True)
    launch_env = launcher_env(free_port(), env) | {"GIF_STORAGE_DIR": str(workdir / "artifacts")}
    if worker_device is not None:
        launch_env["GIF_WORKER_DEVICE"] = worker_device
    process = subprocess.Popen(
        [sys.executable, "-m", "service.tools.launch"],
        cwd=workdir,
        env=launch_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Launched(process)
    threading.Thread(target=lambda: running.lines.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        ready = running.wait_for(READY)
        running.base, running.redis_url = ready.group(1), ready.group(2)
        running.worker_pid, running.api_pid = int(ready.group(3)), int(ready.group(4))
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(LAUNCHER_STOP_S)
        except subprocess.TimeoutExpired:  # its children die with it (PR_SET_PDEATHSIG)
            process.kill()
            process.wait(10)


# --- polling the API -------------------------------------------------------------------------------------------


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> float:
    """One keep-alive GET; returns its latency (seconds from sending to the last body byte)."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    await reader.readexactly(length)
    return time.perf_counter() - started


async def poll(
    port: int,
    path: str,
    seconds: float,
    interval: float | None,
    pollers: int,
    stop: threading.Event | None = None,
    api_key: str | None = None,
) -> list[float]:
    """``pollers`` connections polling ``path`` for ``seconds`` (or until ``stop`` is set); closed loop when
    ``interval`` is None."""
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def poller(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if interval:
            await asyncio.sleep(interval * index / pollers)  # spread the pollers over the interval
        next_at = time.perf_counter()
        while time.perf_counter() < stop_at and not (stop and stop.is_set()):
            latencies.append(await _get(reader, writer, request))
            if interval:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        writer.close()

    await asyncio.gather(*(poller(i) for i in range(pollers)))
    return latencies


def latency_summary(seconds: list[float], duration_s: float) -> dict[str, float]:
    latencies = np.array(seconds) * 1000
    return {
        "requests": len(latencies),
        "per_second": len(latencies) / duration_s,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "max_ms": float(latencies.max()),
    }
