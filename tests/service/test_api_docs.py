"""``/docs`` (Swagger UI) and ``/redoc`` on a host with no internet: their scripts and styles come from the API
itself, not a CDN; open without an API key; and in headless chromium that reaches nothing but the loopback, the
pages render the API's operations."""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support import console_messages, headless_chromium, needs_chromium

# Chromium reaching nothing but the loopback: every request but the loopback's (which chromium never proxies) goes
# to a proxy on a port where nothing listens, and no host name resolves.
OFFLINE = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")


def local_references(page: str) -> list[str]:
    """The URLs a docs page loads (its ``src``, ``href``, ReDoc's ``spec-url``, Swagger UI's ``url``) that are
    paths on the API itself; a URL with a scheme or host fails the calling test."""
    assert not re.search(r"(https?:)?//[\w.-]+", page), "the page names another host"
    return [a or b for a, b in re.findall(r"""(?:src|href|spec-url)="(/[^"]*)"|\burl: '(/[^']*)'""", page)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_api_itself_without_a_key(served, page):
    response = httpx.get(served + page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = local_references(response.text)
    assert "/openapi.json" in urls and len(urls) >= 3
    for url in urls:  # the scripts, styles and favicon: no key needed either
        asset = httpx.get(served + url)
        assert asset.status_code == 200 and asset.content, url


def test_the_docs_assets_are_not_operations_of_the_api(served):
    paths = httpx.get(f"{served}/openapi.json").json()["paths"]
    assert all(path.startswith(("/v1/", "/healthz", "/readyz", "/metrics")) for path in paths), sorted(paths)


@needs_chromium
@pytest.mark.parametrize(
    ("page", "rendered"),
    [
        ("/docs", ['class="opblock opblock-post', 'class="opblock opblock-get', "/v1/jobs/{job_id}/checkpoint"]),
        ("/redoc", ['id="operation/', "/v1/jobs/{job_id}/checkpoint"]),
    ],
)
def test_the_docs_render_in_a_browser_with_no_network(served, tmp_path, page, rendered):
    # The virtual time budget lets the page fetch /openapi.json and render it before the DOM is dumped.
    run = headless_chromium(served + page, tmp_path / "profile", *OFFLINE, "--virtual-time-budget=20000", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert "Generalized Influence Functions" in dom  # the description, from /openapi.json
    for fragment in rendered:
        assert fragment in dom, f"{page} did not render {fragment!r}: {dom[-1500:]}\n{run.stderr[-2000:]}"
    assert console_messages(run) == []


def outward_address() -> str | None:
    """This host's address on its default route (a UDP ``connect`` sends nothing), or None if only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@needs_chromium
def test_the_browser_of_these_tests_reaches_nothing_but_the_loopback(tmp_path):
    """A page on the loopback whose script lies on this host's other address: it runs in a plain browser, not in
    one with the ``OFFLINE`` flags (so those flags would also stop a CDN on a host with internet)."""
    if (address := outward_address()) is None:
        pytest.skip("this host has no address but the loopback")
    server = ThreadingHTTPServer(("0.0.0.0", 0), Probe)
    port = server.server_address[1]
    Probe.page = f'<!doctype html><title>blocked</title><script src="http://{address}:{port}/probe.js"></script>'
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = f"http://127.0.0.1:{port}/"
        plain = headless_chromium(page, tmp_path / "plain", "--dump-dom")
        assert "<title>reached</title>" in plain.stdout, plain.stdout + plain.stderr[-2000:]
        offline = headless_chromium(page, tmp_path / "offline", *OFFLINE, "--dump-dom")
        assert "<title>blocked</title>" in offline.stdout, offline.stdout
    finally:
        server.shutdown()
        server.server_close()


class Probe(BaseHTTPRequestHandler):
    page = ""

    def do_GET(self) -> None:
        body, kind = (b"document.title = 'reached'", "text/javascript") if self.path == "/probe.js" else (
            self.page.encode(), "text/html")  # fmt: skip
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None
