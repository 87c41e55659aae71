"""End-to-end fixtures: a real worker process on the test queue, the API in-process, and the demo
model and data uploaded once.
"""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.client import ApiClient
from service.launch import worker_process


@pytest.fixture(scope="session")
def stack_settings(isolated_settings):
    """Short windows, so that lost jobs are found and cancels seen quickly."""
    with isolated_settings(heartbeat_ttl_s=2.0, reaper_interval_s=0.5, progress_interval_s=0.1,
                           cancel_check_interval_s=0.1, worker_torch_threads=1) as settings:
        yield settings


@pytest.fixture(scope="session")
def start_worker():
    """``start_worker(settings)``: a context manager running ``python -m worker`` with those settings."""
    return lambda settings: worker_process({**os.environ, **settings.as_env()})


@pytest.fixture(scope="session")
def worker(stack_settings, start_worker):
    """One worker process shared by every test on the default test queue."""
    with start_worker(stack_settings) as process:
        yield process


@pytest.fixture(scope="session")
def long_solve() -> dict:
    """A solver spec that runs for minutes unless the job is stopped."""
    return {"kind": "neumann", "tolerance": 1e-12, "max_iterations": 100000}


@pytest.fixture(scope="session")
def api(stack_settings, worker):
    """The API in-process on the worker's queue (its HTTP client is ``api.http``)."""
    with TestClient(create_app(stack_settings)) as http:
        yield ApiClient(http)


@pytest.fixture(scope="session")
def inputs(api, demo) -> dict[str, str]:
    return api.upload_demo(demo["model"].parent)
