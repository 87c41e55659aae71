"""A job whose worker dies leaves `running`: failed with a retryable error, by the worker parent or the reaper."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
from fastapi.testclient import TestClient

from service.web.app import create_app
from tests.support import SuiteClient


@pytest.fixture(scope="module")
def doomed(stack_settings, start_worker):
    """A worker of its own on a queue of its own, which these tests kill, with an API on that queue."""
    settings = stack_settings.model_copy(update={"queue_name": stack_settings.queue_name + "-doomed"})
    with start_worker(settings) as worker, TestClient(create_app(settings)) as http:
        yield worker, http


def start_long_job(http, inputs, solver) -> tuple[str, int]:
    """Submit a long job, wait until it runs; its id and the pid of the process running it."""
    api = SuiteClient(http=http)
    job_id = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [5]}, "solver": solver})["id"]
    api.wait(job_id, until=("running",), timeout_s=60)
    return job_id, http.app.state.context.jobs.get(job_id).worker["pid"]


def assert_lost(http, job_id: str, words: str) -> None:
    job = SuiteClient(http=http).wait(job_id, timeout_s=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker-lost" and job["error"]["retryable"] is True
    assert words in job["error"]["detail"]


def test_a_killed_job_process_is_failed_by_its_worker(doomed, inputs, long_solve):
    worker, http = doomed
    job_id, horse = start_long_job(http, inputs, long_solve)
    assert horse != worker.pid
    os.kill(horse, signal.SIGKILL)
    assert_lost(http, job_id, "the process running the job died")
    assert worker.poll() is None  # the worker itself lives on


def test_a_dead_worker_is_found_by_the_reaper(doomed, inputs, long_solve):
    worker, http = doomed
    job_id, horse = start_long_job(http, inputs, long_solve)
    os.kill(worker.pid, signal.SIGKILL)  # the supervisor: its RQ worker and the job's process die with it
    worker.wait()
    assert_lost(http, job_id, "stopped answering")
    with contextlib.suppress(ProcessLookupError):
        os.kill(horse, 0)
        raise AssertionError("the job's process outlived its worker")
