"""Every error the API returns is an RFC 9457 ``application/problem+json`` document.

``type`` is stable per error kind (``service.core.errors.KINDS``), ``detail`` says what went wrong in
words, and ``errors`` lists field-level problems: ``pointer`` is a JSON pointer into the JSON
body or the multipart form (``/file``, ``/request/classes/0``), ``parameter`` names a query or
path parameter. Unexpected exceptions become a 500 problem and are logged; bad input never does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gif.errors import GifError
from service.core.errors import ErrorKind, ServiceError, kind_of
from service.core.storage.base import StorageFull, StoreUnavailable, is_storage_full

PROBLEM_JSON = "application/problem+json"
STATUS_CODES = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
}
log = logging.getLogger("service.web.problems")


def problem(
    kind: ErrorKind,
    detail: str,
    instance: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        **(extensions or {}),
        "type": kind.type,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "instance": instance,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=kind.status, headers=headers, media_type=PROBLEM_JSON)


def _escape(part: Any) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def body_pointer(body: Any, loc: tuple[Any, ...]) -> str:
    """The JSON pointer of a pydantic ``loc`` in ``body``, without the tags pydantic adds for tagged unions."""
    parts, node = [], body
    for part in loc:
        if isinstance(node, dict) and part not in node and part in node.values():
            continue  # a discriminator value ("remove_class", "fixed"), not a key of the body
        parts.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return "/" + "/".join(_escape(p) for p in parts) if parts else ""


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    items = []
    for error in exc.errors():
        where, *path = error["loc"]
        item: dict[str, Any] = {"detail": error["msg"], "code": error["type"]}
        if where == "body":
            item["pointer"] = body_pointer(exc.body, tuple(path))
        else:
            item["parameter"] = ".".join(str(p) for p in path)
            item["in"] = where
        items.append(item)
    return items


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this path: Starlette's 405 names only the first route that matched the path
    (``/v1/models`` has one route for GET and another for POST)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}/]+\}", template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Register the one mapping from exceptions to problems."""

    async def on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return problem(exc.kind, exc.detail, request.url.path, exc.errors, exc.headers, exc.extensions)

    async def on_engine_error(request: Request, exc: GifError) -> JSONResponse:
        return await on_service_error(request, ServiceError.from_engine(exc))

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        content_type = request.headers.get("content-type", "")
        if any(e.get("pointer") == "" for e in errors) and content_type and "json" not in content_type:
            return problem(
                kind_of("unsupported-media-type"), f"expected application/json, got {content_type}", request.url.path
            )
        if any(e["code"] == "json_invalid" for e in errors):
            return problem(kind_of("bad-request"), "the body is not valid JSON", request.url.path, errors)
        return problem(kind_of("validation-error"), f"{len(errors)} invalid field(s)", request.url.path, errors)

    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = kind_of(STATUS_CODES.get(exc.status_code, "internal"))
        if kind.status != exc.status_code:
            kind = ErrorKind(f"http-{exc.status_code}", exc.status_code, str(exc.detail))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers["Allow"] = ", ".join(allowed)
        return problem(kind, str(exc.detail), request.url.path, headers=headers)

    def unavailable(request: Request, detail: str) -> JSONResponse:
        return problem(kind_of("service-unavailable"), detail, request.url.path, headers={"Retry-After": "5"})

    async def on_redis_down(request: Request, exc: redis.ConnectionError | redis.TimeoutError) -> JSONResponse:
        log.error("redis unavailable: %s", exc)
        return unavailable(request, "the job store (Redis) is unavailable; try again")

    async def on_store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("artifact store unavailable during %s %s: %s", request.method, request.url.path, exc)
        return unavailable(request, "the artifact store (S3) is unavailable; nothing was changed, try again")

    async def on_os_error(request: Request, exc: OSError) -> JSONResponse:
        """A full disk is the store's state, not a bug: 507, and the half-written file is gone (staging files are
        removed on the way out); any other OSError is unexpected."""
        if not is_storage_full(exc):
            return await on_unexpected(request, exc)
        log.warning("artifact store full during %s %s: %s", request.method, request.url.path, exc)
        detail = str(exc) if isinstance(exc, StorageFull) else f"the artifact store's disk is full ({exc.strerror})"
        return problem(kind_of("storage-full"), f"nothing was stored: {detail}", request.url.path)

    async def on_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return problem(kind_of("bad-request"), "the client disconnected before the body was complete", request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(kind_of("internal"), "an unexpected error occurred; it has been logged", request.url.path)

    handlers: list[tuple[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]]] = [
        (ServiceError, on_service_error),
        (GifError, on_engine_error),
        (RequestValidationError, on_validation_error),
        (HTTPException, on_http_error),
        (redis.ConnectionError, on_redis_down),
        (redis.TimeoutError, on_redis_down),
        (StoreUnavailable, on_store_down),
        (OSError, on_os_error),
        (ClientDisconnect, on_disconnect),
        (Exception, on_unexpected),
    ]
    for exc_type, handler in handlers:
        app.add_exception_handler(exc_type, handler)


def responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems a route can return."""
    titles: dict[int, list[str]] = {}
    for code in codes:
        kind = kind_of(code)
        titles.setdefault(kind.status, []).append(f"{kind.title} ({kind.type})")
    schema = {"schema": {"$ref": "#/components/schemas/Problem"}}
    return {status: {"description": "; ".join(t), "content": {PROBLEM_JSON: schema}} for status, t in titles.items()}
