"""End-to-end fixtures: a real Redis, a real worker process on the test queue, the API in-process,
and the demo model and data uploaded once. Windows are short so that lost jobs are found quickly.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from gif.demo import write_demo_assets
from service.app import create_app
from service.client import ApiClient
from service.launch import redis_for, worker_process
from service.settings import Settings



@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory):
    """Settings under a fresh key prefix and queue, on REDIS_URL when it answers, else a redis-server of our own."""
    with redis_for(tmp_path_factory.mktemp("redis")) as url:
        tag = f"test-{secrets.token_hex(4)}"
        yield Settings(redis_url=url, key_prefix=tag, queue_name=tag, storage_dir=tmp_path_factory.mktemp("artifacts"),
                       heartbeat_ttl_s=2.0, reaper_interval_s=0.5, progress_interval_s=0.1,
                       cancel_check_interval_s=0.1, worker_torch_threads=1)
        client = redis.Redis.from_url(url)
        for pattern in (f"{tag}:*", f"rq:*{tag}*"):
            for key in client.scan_iter(pattern):
                client.delete(key)


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
def demo_dir(tmp_path_factory) -> Path:
    """What ``gif demo-assets`` writes: model.safetensors, architecture.json, train/eval.safetensors, job.json."""
    directory = tmp_path_factory.mktemp("demo")
    write_demo_assets(directory)
    return directory


@pytest.fixture(scope="session")
def inputs(api, demo_dir) -> dict[str, str]:
    return api.upload_demo(demo_dir)
