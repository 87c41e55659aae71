"""API fixtures: the app in-process on a real Redis with no worker on its queue (jobs stay queued),
the demo model and data uploaded once.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.web.app import create_app
from tests.support import SuiteClient


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
