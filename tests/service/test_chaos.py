"""Chaos under `make run`: small jobs while work-horses, workers and Redis are SIGKILLed at random.

Bounded (20 jobs of ~2 s each, a kill every ~1.5 s for at most 30 s, loopback only). At the end every job is in a
terminal state and none is lost; a job failed as retryable (its worker died) is submitted again, as a
client would; every succeeded job's checkpoint matches its recorded sha256. The counts are printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time

import httpx
from gif_client import ProblemError

from bench.stack import launched
from tests.service.test_launch import processes
from tests.support import SuiteClient

JOBS = 20  # about 40 s of work: still running through the whole kill window (at most 30 s)
KILL_EVERY_S = 1.5
CHAOS_S = 30.0
TERMINAL = ("succeeded", "failed", "cancelled")
# ~2 s per job on a CPU core (800 Neumann steps): long enough that killing a work-horse often hits a running job,
# not only one warming up for the next
SOLVE_FOR_A_WHILE = {"kind": "neumann", "tolerance": 1e-12, "max_iterations": 800}


def descendants(root: int) -> dict[int, list[str]]:
    """argv of every process below ``root``."""
    parents = {}
    for pid, _ in processes():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                parents[pid] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return {pid: args for pid, args in processes() if pid in below}


def victims(root: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {"work-horse": [], "worker": [], "redis": []}
    for pid, args in descendants(root).items():
        line = " ".join(args)
        if "worker.horse" in line:
            found["work-horse"].append(pid)
        elif "worker.runner" in line:
            found["worker"].append(pid)
        elif "redis-server" in line:
            found["redis"].append(pid)
    return found


def test_jobs_survive_killed_horses_workers_and_redis(tmp_path, demo):
    env = {**os.environ, "GIF_HEARTBEAT_TTL_S": "3", "GIF_REAPER_INTERVAL_S": "0.5", "GIF_WORKER_TORCH_THREADS": "1"}
    rng = random.Random(0)
    kills = {"work-horse": 0, "worker": 0, "redis": 0}
    with launched(tmp_path, env=env) as running:
        lines = running.lines
        api = SuiteClient(running.base, timeout_s=30)
        inputs = api.upload_demo(demo["model"].parent)
        spec = {**json.loads(demo["job"].read_text()), **inputs, "solver": SOLVE_FOR_A_WHILE}

        def submit() -> str:
            for _ in range(60):  # while Redis restarts, a submit can meet a 503: a client retries
                try:
                    return api.submit(spec)["id"]
                except (ProblemError, httpx.HTTPError):
                    time.sleep(0.5)
            raise AssertionError("the service did not take a job for 30 s:\n" + "".join(lines[-30:]))

        jobs = {submit(): 0 for _ in range(JOBS)}  # job id → how many times it was submitted again
        started = time.monotonic()
        while time.monotonic() - started < CHAOS_S:
            time.sleep(KILL_EVERY_S)
            kind = rng.choice(sorted(kills))
            found = victims(running.process.pid)[kind]
            if found:
                os.kill(rng.choice(found), signal.SIGKILL)
                kills[kind] += 1
            if all(count >= 2 for count in kills.values()) and time.monotonic() - started > CHAOS_S / 2:
                break
        outcome = {"succeeded": 0, "failed retryable": 0, "failed other": 0, "retried": 0}
        pending, deadline = dict(jobs), time.monotonic() + 240
        while pending:
            assert time.monotonic() < deadline, f"jobs not terminal: {pending}\n" + "".join(lines[-40:])
            for job_id in list(pending):
                try:
                    job = api.job(job_id)  # a 404 here would be a lost job: ProblemError fails the test
                except httpx.HTTPError:
                    continue
                if job["status"] not in TERMINAL:
                    continue
                del pending[job_id]
                if job["status"] == "succeeded":
                    outcome["succeeded"] += 1
                    body = api.checkpoint(job_id)
                    assert hashlib.sha256(body).hexdigest() == job["result"]["checkpoint"]["sha256"]
                elif job["error"].get("retryable"):
                    outcome["failed retryable"] += 1
                    outcome["retried"] += 1
                    pending[submit()] = jobs[job_id] + 1
                else:
                    outcome["failed other"] += 1
            time.sleep(0.2)
        print(f"\nchaos: kills {kills}; outcome {outcome}")
        assert outcome["failed other"] == 0, "".join(lines[-40:])
        assert outcome["succeeded"] == JOBS
        assert all(count >= 1 for count in kills.values()), kills
    assert running.process.returncode == 0, running.tail()  # stopped by Ctrl-C (SIGINT)
