"""Slow and greedy clients are bounded: a body that trickles or stalls gets a 408, a connection that sends no
request head is closed, connections past GIF_MAX_CONNECTIONS are answered 503 at once, and the service serves
everyone again once they are gone. The server is uvicorn on the loopback, configured as ``python -m service`` is."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.web.app import create_app
from tests.service.conftest import serving

PACE = {"body_idle_timeout_s": 0.5, "body_min_bytes_per_s": 1000.0, "request_head_timeout_s": 0.5}


@pytest.fixture
def paced(isolated_settings) -> Iterator[tuple[str, object]]:
    with isolated_settings(**PACE, max_connections=40) as settings, serving(create_app(settings), settings) as url:
        yield url, settings


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def closed_by_server(sock: socket.socket, within_s: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it was still open after ``within_s``."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize(
    ("path", "content_type"), [("/v1/datasets", "multipart/form-data; boundary=b"), ("/v1/jobs", "application/json")]
)
def test_a_trickled_body_gets_a_408(paced, path, content_type):
    url, _ = paced
    sock = raw_connection(url)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n"
    sock.sendall(head.encode())
    started, answer = time.monotonic(), b""
    sock.settimeout(0.05)
    while not answer and time.monotonic() - started < 5:
        try:
            sock.sendall(b"-")  # 20 bytes/s, under the 1,000 bytes/s asked for
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"bytes/s" in answer and time.monotonic() - started < 3


def test_a_stalled_body_gets_a_408_and_its_connection_is_closed(paced):
    url, _ = paced
    sock = raw_connection(url)
    sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    answer = closed_by_server(sock, within_s=5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request-timeout" in answer


def test_connections_that_send_no_request_head_are_closed(paced):
    url, _ = paced
    silent = [raw_connection(url) for _ in range(20)]
    partial = [raw_connection(url) for _ in range(10)]
    for sock in partial:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # a head that never completes
    assert httpx.get(f"{url}/healthz").status_code == 200, "others are served meanwhile"
    started = time.monotonic()
    assert all(closed_by_server(sock, within_s=5) == b"" for sock in silent + partial)
    assert time.monotonic() - started < 5


def test_past_max_connections_a_503_at_once_then_service_again(paced):
    url, _ = paced
    hogs = [raw_connection(url) for _ in range(45)]  # more than GIF_MAX_CONNECTIONS (40)
    time.sleep(0.1)
    crowded = httpx.get(f"{url}/healthz", timeout=5)
    assert crowded.status_code == 503
    for sock in hogs:
        closed_by_server(sock, within_s=5)  # the head deadline frees them
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
