"""The error kinds of the service, mapped once: a stable code, an HTTP status and a title each.

Engine errors (``gif.errors``) keep their own codes; service errors add theirs. The HTTP layer
turns a kind into an RFC 9457 problem (``type`` = ``PROBLEM_TYPE_PREFIX`` + code) and a failed job
carries the same code and type in its ``error`` object. No FastAPI here: the worker imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gif import errors as engine

PROBLEM_TYPE_PREFIX = "urn:gif:problem:"


@dataclass(frozen=True)
class ErrorKind:
    code: str
    status: int
    title: str

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.code


KINDS: dict[str, ErrorKind] = {
    kind.code: kind
    for kind in (
        ErrorKind(engine.GifError.code, 422, "The edit cannot be done"),
        ErrorKind(engine.InvalidSpecError.code, 422, "The job does not fit its model and data"),
        ErrorKind(engine.UnknownArchitectureError.code, 422, "Unknown or invalid architecture"),
        ErrorKind(engine.InvalidWeightsError.code, 422, "Invalid weights"),
        ErrorKind(engine.InvalidDatasetError.code, 422, "Invalid dataset"),
        ErrorKind(engine.NonFiniteError.code, 422, "The edit produced NaN or Inf"),
        ErrorKind(engine.EditCancelled.code, 409, "The job was cancelled"),
        ErrorKind(engine.OutOfMemoryError.code, 507, "The job did not fit in the device's memory"),
        ErrorKind("device-error", 503, "The device failed while running the job"),
        ErrorKind("validation-error", 422, "The request is invalid"),
        ErrorKind("unknown-reference", 422, "The request refers to something that does not exist"),
        ErrorKind("idempotency-key-reused", 422, "The idempotency key was used with another request"),
        ErrorKind("bad-request", 400, "The request cannot be read"),
        ErrorKind("unauthorized", 401, "A valid API key is required"),
        ErrorKind("not-found", 404, "Not found"),
        ErrorKind("method-not-allowed", 405, "Method not allowed"),
        ErrorKind("conflict", 409, "The resource is not in a state that allows this"),
        ErrorKind("storage-quota-exceeded", 403, "The key's stored bytes would pass its quota"),
        ErrorKind("active-jobs-limit", 409, "The key has as many jobs queued or running as it may"),
        ErrorKind("request-timeout", 408, "The request body came too slowly"),
        ErrorKind("payload-too-large", 413, "The request body is too large"),
        ErrorKind("unsupported-media-type", 415, "Unsupported content type"),
        ErrorKind("rate-limited", 429, "Too many requests; wait and try again"),
        ErrorKind("timeout", 504, "The job ran past its time limit"),
        ErrorKind("worker-lost", 503, "The worker running the job stopped answering"),
        ErrorKind("input-missing", 410, "An input of the job is no longer stored"),
        ErrorKind("service-unavailable", 503, "A backing service is unavailable"),
        ErrorKind("storage-full", 507, "The artifact store has no room for this"),
        ErrorKind("internal", 500, "Internal error"),
    )
}


def kind_of(code: str) -> ErrorKind:
    return KINDS.get(code, KINDS["internal"])


class ServiceError(Exception):
    """An error the HTTP layer shows as a problem; ``errors`` lists field-level problems, ``extensions`` adds
    members to the problem document (RFC 9457 §3.2)."""

    def __init__(
        self,
        code: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ):
        super().__init__(detail)
        self.extensions = extensions or {}
        self.kind = kind_of(code)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}

    @classmethod
    def from_engine(cls, exc: engine.GifError, pointer: str | None = None) -> ServiceError:
        """An engine error, each of its problems attached to ``pointer`` (a JSON pointer into the request)."""
        located = {"pointer": pointer} if pointer else {}
        items = [{**located, "detail": p} for p in exc.problems] or (
            [{**located, "detail": exc.detail}] if pointer else []
        )
        return cls(exc.code, str(exc), items)


def job_error(code: str, detail: str, problems: list[str] | None = None, retryable: bool = False) -> dict[str, Any]:
    """A failed or cancelled job's ``error`` object."""
    kind = kind_of(code)
    return {
        "type": kind.type,
        "code": kind.code,
        "title": kind.title,
        "detail": detail,
        "problems": list(problems or []),
        "retryable": retryable,
    }
