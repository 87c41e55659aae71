"""``GET /v1/jobs/{id}/report`` for a job a real worker ran, and that page in a real browser (Debian's chromium,
headless; skipped where it is not installed): it renders, logs nothing to the console under the API's own
Content-Security-Policy, and its screenshot is not blank."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tests.support import console_messages, headless_chromium, needs_chromium

PROBE = b"<!doctype html><p>probe</p><script>console.error('probe message')</script>"


@pytest.fixture(scope="module")
def reported(api, inputs, demo):
    spec = {**json.loads(demo["job"].read_text()), **inputs, "retrain": {"epochs": 2}}
    job = api.wait(api.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    return job, api.http.get(f"/v1/jobs/{job['id']}/report")


def test_a_succeeded_job_has_a_report_page(reported):
    job, response = reported
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page, metrics = response.text, job["result"]["metrics"]
    assert job["id"] in page and f"{metrics['retrained']['score']:.4f}" in page
    assert f"{metrics['after']['forget_test_accuracy']:.4f}" in page and "<script" not in page


def test_there_is_no_report_before_success(api, inputs, long_solve, problem):
    problem(api.http.get("/v1/jobs/job_" + "0" * 20 + "/report"), 404, "not-found")
    job = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [8]}, "solver": long_solve})
    try:
        body = problem(api.http.get(f"/v1/jobs/{job['id']}/report"), 409, "conflict")
        assert "once it succeeded" in body["detail"]
    finally:
        api.http.post(f"/v1/jobs/{job['id']}/cancel")


@pytest.fixture()
def served(reported) -> Iterator[str]:
    """The report's bytes with the API's own headers at ``/report`` on the loopback (a browser cannot send the
    test client's requests), and a page that logs a console error at ``/probe``."""
    _, response = reported
    routes = {
        "/report": (response.content, {k: response.headers[k] for k in ("content-type", "content-security-policy")}),
        "/probe": (PROBE, {"content-type": "text/html"}),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, headers = routes.get(self.path, (b"", {}))
            self.send_response(200 if body else 404)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def screenshot(url: str, out: Path) -> list[str]:
    """Load ``url`` in headless chromium, write a screenshot to ``out``; returns the console messages it logged."""
    run = headless_chromium(url, out.parent / "profile", "--window-size=1200,1600", f"--screenshot={out}")
    assert out.exists(), run.stderr[-2000:]
    return console_messages(run)


@needs_chromium
def test_the_report_renders_in_a_browser_without_console_errors(served, tmp_path):
    assert any("probe message" in line for line in screenshot(f"{served}/probe", tmp_path / "probe.png"))
    shot = tmp_path / "report.png"
    assert screenshot(f"{served}/report", shot) == []
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    colours = image.getcolors(maxcolors=1 << 20) or []
    background = max(colours)[0]
    assert background < 0.9 * image.width * image.height  # more than a tenth of the page is drawn
    drawn = {colour for count, colour in colours if count > 200}
    for bar in ((0x1F, 0x6F, 0xD1), (0xE0, 0x7B, 0x00), (0x8A, 0x8F, 0x98)):  # after, retrained, before
        assert bar in drawn, f"no {bar} bars in the screenshot"
