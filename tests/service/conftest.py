"""API fixtures: a real Redis (REDIS_URL when it answers, else a redis-server started here), the app
in-process with no worker on its queue (jobs stay queued), the demo model and data, and problem checks.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from gif.demo import write_demo_assets
from service.app import create_app
from service.client import ApiClient
from service.errors import PROBLEM_TYPE_PREFIX
from service.launch import redis_for
from service.settings import Settings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    with redis_for(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def settings(redis_url, tmp_path_factory):
    """Keys and queue under a fresh prefix, removed afterwards (the Redis may be a shared one)."""
    tag = f"test-{secrets.token_hex(4)}"
    yield Settings(redis_url=redis_url, key_prefix=tag, queue_name=tag, storage_dir=tmp_path_factory.mktemp("artifacts"),
                   reaper_interval_s=0.5)
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"{tag}:*", f"rq:*{tag}*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


@pytest.fixture(scope="session")
def http(settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="session")
def api(http):
    return ApiClient(http)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, Path]:
    """model, architecture, train, eval, job: the files of ``gif demo-assets`` (an MLP on the digits)."""
    return {p.stem: p for p in write_demo_assets(tmp_path_factory.mktemp("demo"))}


@pytest.fixture(scope="session")
def inputs(api, demo) -> dict[str, str]:
    """The demo model, training and held-out data, uploaded once: their ids as a job body names them."""
    return api.upload_demo(demo["model"].parent)


def assert_problem(response, status: int, code: str) -> dict:
    """An RFC 9457 problem of this kind; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == PROBLEM_TYPE_PREFIX + code, body
    assert body["status"] == status and body["title"] and body["detail"]
    return body


@pytest.fixture(scope="session")
def problem():
    return assert_problem
