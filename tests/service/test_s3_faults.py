"""The S3 server lost (issue 25, item 4): killed during an upload, during a job's input fetch and during its
checkpoint write. The upload gets a 503 problem with Retry-After, the job fails retryable and a resubmitted job
succeeds once the server is back, /readyz reports the store down meanwhile, and the bucket holds exactly what Redis
references: no object and no reference is left dangling.

The server the service talks to is ``s3_relay.py``, a relay in front of the session's moto server that SIGKILLs
itself at the request named (moto keeps the objects, as a restarted server keeps its disk). The API and a worker on
a host of its own (its own staging and cache directory) reach S3 with one retry and a 1 s connect timeout, so that
each failure comes within seconds, and both reach it only through the relay. A server that hangs instead (it takes
no connection) is given up on after the connect timeout of each attempt.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from service.core.context import ServiceContext
from service.core.settings import Settings
from service.core.storage import artifact_store
from service.core.storage.base import StoreUnavailable
from service.tools.launch import free_port
from service.tools.local_s3 import CREDENTIALS, wait_for_http
from service.web.app import create_app
from tests.service.test_storage_full import assert_nothing_dangling
from tests.support import SuiteClient

RELAY = Path(__file__).with_name("s3_relay.py")
FAILS_WITHIN_S = 10.0  # one retry and a 1 s connect timeout: a lost server is found out in seconds, not minutes


class Endpoint:
    """The S3 server as the service sees it: started, killed on cue, started again on the same port."""

    def __init__(self, upstream: str):
        self.upstream_port = urlparse(upstream).port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def up(self, die_on: str | None = None, after: int = 0) -> None:
        """(Re)start it; with ``die_on``, it dies ``after`` bytes into the body of the first request that says so."""
        self.down()
        args = [sys.executable, str(RELAY), str(self.port), str(self.upstream_port)]
        self.process = subprocess.Popen(args + (["--die-on", die_on, "--after", str(after)] if die_on else []))
        wait_for_http(self.url, timeout_s=10)

    def killed(self, timeout_s: float = 30) -> bool:
        """Whether it killed itself on cue (else it is still up after ``timeout_s``)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_s) == -signal.SIGKILL
        except subprocess.TimeoutExpired:
            return False

    def down(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Lost:
    api: SuiteClient
    ctx: ServiceContext
    endpoint: Endpoint
    worker_host: Settings

    @property
    def blobs(self) -> str:
        """The start of an object's request line: every blob lives under this path (path-style addressing)."""
        return f"/{self.ctx.artifacts.store.bucket}/gif/blobs/"  # type: ignore[attr-defined]

    def readyz(self) -> int:
        return self.api.http.get("/readyz").status_code

    def assert_nothing_dangling(self) -> set[str]:
        assert not list((self.worker_host.storage_dir / "staging").glob("*")), "the worker left a staging file"
        return assert_nothing_dangling(self.ctx)


@pytest.fixture(scope="module")
def lost(isolated_settings, s3_server, s3_bucket, start_worker, tmp_path_factory) -> Iterator[Lost]:
    endpoint = Endpoint(s3_server)
    endpoint.up()
    storage = {"storage_url": f"s3://{s3_bucket()}/gif", "s3_endpoint_url": endpoint.url}
    bounded = {"s3_retries": 1, "s3_connect_timeout_s": 1.0}
    windows = {"heartbeat_ttl_s": 2.0, "reaper_interval_s": 0.5, "progress_interval_s": 0.1, "worker_torch_threads": 1}
    try:
        with isolated_settings(**storage, **bounded, **windows) as settings:
            worker_host = settings.model_copy(update={"storage_dir": tmp_path_factory.mktemp("worker-host")})
            with start_worker(worker_host), TestClient(create_app(settings)) as http:
                yield Lost(SuiteClient(http=http), http.app.state.context, endpoint, worker_host)  # type: ignore[attr-defined]
    finally:
        endpoint.down()


def a_dataset(path: Path, seed: int) -> Path:
    """A dataset no other test uploads: its blob is not in the bucket yet, so storing it sends the bytes."""
    generator = torch.Generator().manual_seed(seed)
    save_file({"x": torch.randn(2000, 64, generator=generator), "y": torch.arange(2000) % 10}, path)
    return path


def test_an_upload_the_s3_server_dies_during_is_a_503_and_leaves_nothing(lost, tmp_path, problem):
    before = lost.assert_nothing_dangling()
    data = a_dataset(tmp_path / "data.safetensors", seed=1)  # 516 KiB of tensors
    lost.endpoint.up(die_on=f"PUT {lost.blobs}", after=64 * 1024)
    started = time.monotonic()
    with open(data, "rb") as fh:
        refused = lost.api.http.post("/v1/datasets", files={"file": ("data.safetensors", fh)})
    assert time.monotonic() - started < FAILS_WITHIN_S
    problem(refused, 503, "service-unavailable")
    assert refused.headers["retry-after"] == "5"
    assert lost.endpoint.killed(), "the server was to die during the upload"
    assert lost.readyz() == 503  # the store is down, and readiness says so
    assert lost.api.http.get("/v1/datasets").json()["items"] == []
    lost.endpoint.up()
    assert lost.readyz() == 200
    assert lost.assert_nothing_dangling() == before  # the cut-off PUT left no object, the failed add no reference
    stored = lost.api.upload_dataset(data)
    assert lost.assert_nothing_dangling() == before | {stored["sha256"]}


def failed_for_want_of_s3(lost: Lost, job: dict) -> None:
    ended = lost.api.wait(job["id"], timeout_s=60)
    assert ended["status"] == "failed", ended
    error = ended["error"]
    assert error["code"] == "service-unavailable" and error["retryable"] is True, error
    assert "the S3 server is unavailable" in error["detail"] and "submit the job again" in error["detail"], error
    assert ended["result"] is None
    assert lost.api.http.get(f"/v1/jobs/{job['id']}/checkpoint").status_code == 409


def test_a_job_whose_input_fetch_loses_the_s3_server_fails_retryable_and_runs_once_it_is_back(lost, demo):
    lost.endpoint.up()  # whatever an earlier test left
    spec = {**json.loads(demo["job"].read_text()), **lost.api.upload_demo(demo["model"].parent)}
    uploaded = lost.assert_nothing_dangling()
    lost.endpoint.up(die_on=f"GET {lost.blobs}")  # the worker's host has no copy yet: it fetches each input
    failed_for_want_of_s3(lost, lost.api.submit(spec))
    assert lost.endpoint.killed(timeout_s=0), "the server was to die during the input fetch"
    assert lost.readyz() == 503
    lost.endpoint.up()
    assert lost.readyz() == 200
    assert lost.assert_nothing_dangling() == uploaded
    again = lost.api.wait(lost.api.submit(spec)["id"], timeout_s=60)
    assert again["status"] == "succeeded", again["error"]


def test_a_job_whose_checkpoint_write_loses_the_s3_server_fails_retryable_and_keeps_nothing(lost, demo):
    lost.endpoint.up()
    inputs = lost.api.upload_demo(demo["model"].parent)
    spec = {**json.loads(demo["job"].read_text()), **inputs, "request": {"kind": "remove_class", "classes": [3]}}
    uploaded = lost.assert_nothing_dangling()
    lost.endpoint.up(die_on=f"PUT {lost.blobs}", after=1024)  # a checkpoint no job has written: it is sent
    failed_for_want_of_s3(lost, lost.api.submit(spec))
    assert lost.endpoint.killed(timeout_s=0), "the server was to die during the checkpoint write"
    assert lost.readyz() == 503
    lost.endpoint.up()
    assert lost.readyz() == 200
    assert lost.assert_nothing_dangling() == uploaded  # no checkpoint object, no reference to one
    again = lost.api.wait(lost.api.submit(spec)["id"], timeout_s=60)
    assert again["status"] == "succeeded", again["error"]
    assert again["result"]["checkpoint"]["sha256"] in lost.assert_nothing_dangling()


def test_a_server_that_takes_no_connection_is_given_up_on_after_the_connect_timeouts(tmp_path, monkeypatch):
    """A hung server: its accept queue is full, so the kernel drops the connection attempts unanswered. Two attempts
    of 0.5 s, and the store says so (botocore's own default would be 60 s an attempt, six attempts)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as hung, socket.socket() as first:
        hung.bind(("127.0.0.1", 0))
        hung.listen(0)
        first.connect(hung.getsockname())  # fills the queue: no one accepts
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
        settings = Settings(
            storage_url="s3://bucket/gif",
            s3_endpoint_url=endpoint,
            storage_dir=tmp_path,
            s3_connect_timeout_s=0.5,
            s3_retries=1,
        )
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="the S3 server is unavailable: Connect timeout"):
            artifact_store(settings).check()
        assert 1.0 <= time.monotonic() - started < 5.0
