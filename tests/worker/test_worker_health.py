"""The worker's health, and the GPU without one: real worker processes, on a GPU under the CUDA double
(tests/cuda_double), which keeps the rules an H200 enforced. Each failure seen there has a test here: the warm-up
that read CUDA's statistics before its allocator existed, the standby that died of out-of-memory beside a long job,
the job re-enqueued forever after its process died, and the worker that could not start and was restarted in
silence."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from gif_client.commands import worker_line

from service.web.app import create_app
from tests.support import SuiteClient

FAST = {"heartbeat_ttl_s": 2.0, "reaper_interval_s": 0.5, "progress_interval_s": 0.1, "cancel_check_interval_s": 0.1}


@contextmanager
def stack(isolated_settings, start_worker, **overrides) -> Iterator[tuple[Any, SuiteClient]]:
    """A worker (``python -m worker``, default device ``auto``) and the API on a queue and key prefix of their own."""
    with (
        isolated_settings(**{**FAST, "worker_torch_threads": 1, **overrides}) as settings,
        start_worker(settings) as worker,
        TestClient(create_app(settings)) as http,
    ):
        yield worker, SuiteClient(http=http)


def until(condition: Callable[[], Any], timeout_s: float = 60.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:g} s"
        time.sleep(0.1)
    return value


def workers(api: SuiteClient) -> dict[str, Any]:
    response = api.http.get("/v1/workers")
    assert response.status_code == 200, response.text
    return response.json()


def in_state(api: SuiteClient, state: str) -> dict[str, Any] | None:
    return next((w for w in workers(api)["workers"] if w["state"] == state), None)


def test_a_job_runs_on_the_gpu_and_the_fleet_shows_it(cuda_double_env, isolated_settings, start_worker, demo):
    cuda_double_env()
    with stack(isolated_settings, start_worker) as (_, api):
        idle = until(lambda: in_state(api, "idle"), what="a warm worker")
        assert idle["device"] == {
            "type": "cuda",
            "index": 0,
            "name": "CUDA test double",
            "total_memory_bytes": 16 * 1024**3,
        }
        assert api.http.get("/readyz").json()["status"] == "ready"
        inputs = api.upload_demo(demo["model"].parent)
        job = api.wait(api.submit({**json.loads(demo["job"].read_text()), **inputs})["id"])
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["device"]["type"] == "cuda" and job["result"]["device"]["name"] == "CUDA test double"
        assert job["attempts"] == 1 and not job["warnings"]
        done = until(lambda: (w := in_state(api, "idle")) and w["jobs_done"] == 1 and w, what="the worker idle again")
        assert "cuda:0 (CUDA test double, 16 GiB)  idle  jobs done: 1" in worker_line(done)


def test_the_next_job_process_opens_the_gpu_only_once_the_running_job_is_done(
    cuda_double_env, isolated_settings, start_worker, demo, long_solve
):
    """On an H200 the standby warmed up beside a long job and died of CUDA's out-of-memory: here a second context
    while another process holds one is refused the same way."""
    state = cuda_double_env("exclusive")
    with stack(isolated_settings, start_worker) as (_, api):
        inputs = api.upload_demo(demo["model"].parent)
        long = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [4]}, "solver": long_solve})
        running = api.wait(long["id"], until=("running",), timeout_s=60)
        assert running["status"] == "running"
        short = api.submit({**json.loads(demo["job"].read_text()), **inputs})
        time.sleep(3)  # the next standby has long been started and loaded the engine
        assert in_state(api, "running")["job_id"] == long["id"]
        api.http.post(f"/v1/jobs/{long['id']}/cancel")
        assert api.wait(long["id"])["status"] == "cancelled"
        job = api.wait(short["id"])
        assert job["status"] == "succeeded" and job["result"]["device"]["type"] == "cuda", job["error"]
    events = (state / "events").read_text().splitlines()
    assert not [e for e in events if "refused" in e], events
    assert len([e for e in events if e.endswith(" context")]) >= 2  # one for each job, one after the other


def test_a_gpu_that_never_warms_up_takes_no_job_and_says_why(cuda_double_env, isolated_settings, start_worker, demo):
    cuda_double_env("broken")
    overrides = {"worker_warmup_attempts": 1, "worker_unhealthy_retry_s": 600.0}
    with stack(isolated_settings, start_worker, **overrides) as (worker, api):
        sick = until(lambda: in_state(api, "unhealthy"), what="the worker marked unhealthy")
        assert "a job process failed the warm-up on cuda:0" in sick["reason"]
        assert "CUDA error: out of memory (the device did not come up)" in sick["reason"]  # its last words
        ready = api.http.get("/readyz").json()
        assert ready["status"] == "degraded" and "no healthy worker" in ready["reason"]
        inputs = api.upload_demo(demo["model"].parent)
        job = api.submit({**json.loads(demo["job"].read_text()), **inputs})
        assert "no healthy worker" in job["warnings"][0] and "until a healthy worker takes it" in job["warnings"][0]
        time.sleep(2)
        waiting = api.job(job["id"])
        assert waiting["status"] == "queued" and waiting["attempts"] == 0  # never taken by the sick worker
        assert worker.poll() is None
        api.cancel(job["id"])


def test_a_device_setting_the_host_cannot_honour_is_reported_not_restarted(
    isolated_settings, start_worker, monkeypatch
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever this host has
    with stack(isolated_settings, start_worker, worker_device="cuda") as (worker, api):
        sick = until(lambda: in_state(api, "unhealthy"), what="the supervisor's report")
        assert sick["reason"] == "GIF_WORKER_DEVICE=cuda, but no CUDA device is visible"
        assert "no CUDA device is visible" in api.http.get("/readyz").json()["reason"]
        time.sleep(1.5)
        assert worker.poll() is None  # up, reporting, not exiting to be restarted


def test_a_job_whose_process_keeps_dying_runs_a_bounded_number_of_times(
    isolated_settings, start_worker, demo, long_solve
):
    max_attempts = 2
    with stack(isolated_settings, start_worker, worker_device="cpu", job_max_attempts=max_attempts) as (_, api):
        inputs = api.upload_demo(demo["model"].parent)
        until(lambda: in_state(api, "idle"), what="a warm worker")
        job_id = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [2]}, "solver": long_solve})["id"]
        jobs = api.http.app.state.context.jobs
        for attempt in range(1, max_attempts + 1):
            until(lambda: (r := jobs.get(job_id)).status == "running" and r.attempts == attempt, what="a run")
            os.kill(jobs.get(job_id).worker["pid"], signal.SIGKILL)
        failed = api.wait(job_id, timeout_s=60)
    assert failed["status"] == "failed" and failed["attempts"] == max_attempts
    assert failed["error"]["code"] == "worker-lost" and failed["error"]["retryable"] is True
    detail = failed["error"]["detail"]
    assert "killed by signal 9 (SIGKILL)" in detail and f"attempt {max_attempts} of {max_attempts}" in detail
    (retried,) = failed["warnings"]
    assert retried.startswith("attempt 1 of 2 ended early: the process running the job died (killed by signal 9")
    assert "its last words: job started;" in retried  # its last log line, quoted as a person would
    assert retried.endswith("the job was queued again")
