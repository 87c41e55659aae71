"""Signed notifications: a job that ends POSTs its resource to notify.url, signed as Standard Webhooks."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from fastapi.testclient import TestClient

from service.core.webhooks import signature
from service.web.app import create_app
from tests.support import SuiteClient


@pytest.fixture()
def receiver():
    """A local HTTP server that records every POST (headers and body)."""
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks", received, arrived
    server.shutdown()


def test_an_ended_job_is_posted_signed_to_its_notify_url(isolated_settings, start_worker, demo, receiver, problem):
    url, received, arrived = receiver
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    settings_cm = isolated_settings(webhook_secret=secret, webhook_allowed_hosts=["127.0.0.1"])
    with settings_cm as settings, start_worker(settings), TestClient(create_app(settings)) as http:
        api = SuiteClient(http=http)
        inputs = api.upload_demo(demo["model"].parent)
        spec = {**json.loads(demo["job"].read_text()), **inputs, "notify": {"url": url}}
        job = api.wait(api.submit(spec)["id"])
        assert job["status"] == "succeeded"
        assert arrived.wait(30), "no notification arrived"
        headers, body = received[0]
        assert json.loads(body) == api.job(job["id"]) and headers["webhook-id"] == f"{job['id']}.succeeded"
        expected = signature(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
        assert headers["webhook-signature"] == expected
        elsewhere = {**spec, "notify": {"url": "https://example.org/hooks"}}
        body = problem(http.post("/v1/jobs", json=elsewhere), 422, "validation-error")
        assert body["errors"] == [
            {"pointer": "/notify/url", "detail": "example.org is not in GIF_WEBHOOK_ALLOWED_HOSTS"}
        ]
