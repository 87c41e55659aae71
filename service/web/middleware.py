"""The API's ASGI middleware: request body caps (413 past the route's limit) and HTTP request metrics."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an ``HTTPException`` so FastAPI's body reader passes it through unchanged."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: cap request bodies, with a larger cap on the upload routes."""

    def __init__(self, app: ASGIApp, default_limit: int, upload_limit: int, upload_paths: frozenset[str]):
        self.app = app
        self.default_limit = default_limit
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"].rstrip("/") in self.upload_paths else self.default_limit
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
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
