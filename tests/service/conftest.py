"""API fixtures: the app in-process on a real Redis with no worker on its queue (jobs stay queued),
the demo model and data uploaded once; the same app served on the loopback, for a browser or a fuzzer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.web.app import create_app
from service.web.server import server_config
from tests.support import SuiteClient

SERVED_KEY = "served-key"


@pytest.fixture(scope="session")
def settings(isolated_settings):
    with isolated_settings(reaper_interval_s=0.5) as settings:
        yield settings


@pytest.fixture(scope="session")
def http(settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="session")
def api(http):
    return SuiteClient(http=http)


@pytest.fixture(scope="session")
def inputs(api, demo) -> dict[str, str]:
    """The demo model, training and held-out data, uploaded once: their ids as a job body names them."""
    return api.upload_demo(demo["model"].parent)


@contextmanager
def serving(app, settings) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, configured as ``python -m service`` serves it; its base URL."""
    server = uvicorn.Server(server_config(app, settings, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def served(settings) -> Iterator[str]:
    """The app under uvicorn on the loopback, as a browser or a fuzzer reaches it, with the API key ``SERVED_KEY``."""
    keyed = settings.model_copy(update={"api_keys": [SERVED_KEY]})
    with serving(create_app(keyed), keyed) as url:
        yield url
