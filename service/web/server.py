"""How the API is served: uvicorn, with the bounds a shared service needs against slow and greedy clients.

uvicorn closes an idle keep-alive connection only after a response; a connection that never sends a request, or
sends its head a byte at a time, is held for ever, and a few hundred of them hold descriptors and, with a
connection limit, turn every other client away. ``HeadDeadlineH11`` closes a connection that has not completed a
request head within ``GIF_REQUEST_HEAD_TIMEOUT_S`` of opening (or of its last response). Past
``GIF_MAX_CONNECTIONS`` open connections uvicorn answers 503 at once instead of queueing; bodies are bounded by
``service.web.middleware.BodyLimit``, request rates per key by ``GIF_QUOTA_REQUESTS_PER_SECOND``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.core.settings import Settings


class HeadDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request head does not arrive in time."""

    head_timeout_s = 10.0  # replaced per server by ``server_config``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        waiting_after = self.cycle  # the request answered last (None on a new connection)
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._close_if_no_head, waiting_after)

    def _close_if_no_head(self, waiting_after: object) -> None:
        if self.cycle is waiting_after and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``python -m service`` (and of the tests that serve the app on the loopback)."""
    protocol = type("HeadDeadlineH11", (HeadDeadlineH11,), {"head_timeout_s": settings.request_head_timeout_s})
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
        **overrides,
    }
    return uvicorn.Config(app, **options)
