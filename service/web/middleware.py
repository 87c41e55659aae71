"""The API's ASGI middleware: request body caps (413 past the route's limit, 408 when it comes too slowly) and HTTP
request metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import kind_of
from service.web.problems import problem


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an ``HTTPException`` so FastAPI's body reader passes it through unchanged."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodyTooSlow(HTTPException):
    """Raised from ``receive`` when the client sends its body too slowly (a 408, like the size cap's 413)."""

    def __init__(self, detail: str):
        super().__init__(408, detail)


@dataclass(frozen=True)
class BodyLimits:
    default_bytes: int
    upload_bytes: int
    upload_paths: frozenset[str]
    idle_timeout_s: float
    min_bytes_per_s: float


class BodyLimit:
    """ASGI middleware: cap request bodies (a larger cap on the upload routes) and bound how slowly they may arrive.

    A client that trickles its body (a byte a second) would otherwise hold a connection, a staging file and an upload
    slot for as long as it likes. Two bounds, on the time spent waiting for the client only (an upload that waits its
    turn for the parser is not the client's fault): no piece may take longer than ``idle_timeout_s``, and once that
    long has been spent waiting, the body must have come at ``min_bytes_per_s`` on average. After the body is
    complete, ``receive`` only reports a disconnect and is passed through untimed.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        cap = limits.upload_bytes if scope["path"].rstrip("/") in limits.upload_paths else limits.default_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > cap:  # answered before the app runs: no check of it reads a byte
            too_large = BodyTooLarge(cap)
            await problem(kind_of("payload-too-large"), too_large.detail, scope["path"])(scope, receive, send)
            return
        received, waited, complete = 0, 0.0, False

        async def limited_receive() -> Message:
            nonlocal received, waited, complete
            if complete:
                return await receive()
            started = time.monotonic()
            try:
                with anyio.fail_after(limits.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(f"no part of the request body came for {limits.idle_timeout_s:g} s") from None
            waited += time.monotonic() - started
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if received > cap:
                raise BodyTooLarge(cap)
            if not complete and waited > limits.idle_timeout_s and received < limits.min_bytes_per_s * waited:
                raise BodyTooSlow(
                    f"the request body came at {received / waited:.0f} bytes/s; at least "
                    f"{limits.min_bytes_per_s:g} bytes/s are needed"
                )
            return message

        await self.app(scope, limited_receive, send)


class HttpMetrics:
    """ASGI middleware: requests by method, route template and status, and their latency."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry):
        self.app = app
        self.requests = Counter("gif_http_requests", "HTTP requests.", ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "gif_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5, 30),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
