"""RFC 9457 problem documents as exceptions: one class per HTTP status a caller may want to catch."""

from __future__ import annotations

from typing import Any

import httpx


class ProblemError(Exception):
    """The service refused a request; ``type``, ``title``, ``detail`` and ``errors`` come from its problem+json."""

    def __init__(self, status: int, body: dict[str, Any], retry_after_s: float | None = None):
        self.status = status
        self.retry_after_s = retry_after_s
        self.quota: dict[str, Any] | None = body.get("quota") if isinstance(body.get("quota"), dict) else None
        self.type = str(body.get("type", "about:blank"))
        self.title = str(body.get("title", ""))
        self.detail = str(body.get("detail", ""))
        self.errors: list[dict[str, Any]] = list(body.get("errors") or [])
        fields = "; ".join(f"{e.get('pointer') or e.get('parameter')}: {e.get('detail')}" for e in self.errors)
        super().__init__(f"{status} {self.code}: {self.detail}" + (f" ({fields})" if fields else ""))

    @property
    def code(self) -> str:
        """The problem's short name, e.g. ``invalid-spec``."""
        return self.type.rsplit(":", 1)[-1]


class UnauthorizedError(ProblemError):
    pass


class NotFoundError(ProblemError):
    pass


class ConflictError(ProblemError):
    pass


class PayloadTooLargeError(ProblemError):
    pass


class ForbiddenError(ProblemError):
    """A 403, e.g. ``storage-quota-exceeded``: ``quota`` names the limit, its value and the key's usage."""


class RateLimitedError(ProblemError):
    """A 429: ``retry_after_s`` says when to try again, ``quota`` which limit was reached."""


class ValidationFailed(ProblemError):
    """A 422: the request's content is wrong (``errors`` point at the fields)."""


class ServiceUnavailableError(ProblemError):
    pass


BY_STATUS: dict[int, type[ProblemError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationFailed,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def raise_for_problem(response: httpx.Response) -> None:
    if response.is_success or response.status_code == 304:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    retry_after = response.headers.get("retry-after", "")
    raise BY_STATUS.get(response.status_code, ProblemError)(
        response.status_code,
        body if isinstance(body, dict) else {},
        float(retry_after) if retry_after.isdigit() else None,
    )
