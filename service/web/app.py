"""The FastAPI application: routes, problem+json errors, body caps, metrics, and the lost-job reaper.

The API process imports torch (see ``service.web.validation``) but never runs an edit and never
initialises CUDA: models are only built on the ``meta`` device. Edits run in ``worker``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from service.core import reaper
from service.core.context import ServiceContext
from service.core.settings import Settings
from service.web import docs, problems, validation
from service.web.auth import caller
from service.web.dependencies import known_query_parameters
from service.web.metrics import job_registry
from service.web.middleware import BodyLimit, BodyLimits, HttpMetrics
from service.web.routes import architectures, health, jobs, uploads, usage, workers
from service.web.schemas import Problem

log = logging.getLogger("service.web.app")

DESCRIPTION = """Edit trained PyTorch classifiers with Generalized Influence Functions: forget classes or
training examples, or repair labels (backdoors), without retraining.

1. `POST /v1/models` (weights + architecture) and `POST /v1/datasets` (the training data, optionally held-out data).
2. `POST /v1/jobs` with the job specification: checked against the model and data at once, then queued.
3. Poll `GET /v1/jobs/{id}` for `progress`, then `result` (metrics before and after) or `error`.
4. `GET /v1/jobs/{id}/checkpoint`: the edited weights (safetensors; the ETag is their sha256).

Errors are `application/problem+json` (RFC 9457) with a stable `type` per kind and, for bad fields, an `errors`
list of JSON pointers. When the server has API keys, send `Authorization: Bearer <key>` on every `/v1` route;
what a key creates is visible to that key only.
"""


async def reap_lost_jobs(ctx: ServiceContext) -> None:
    """Every ``reaper_interval_s``: ``service.core.reaper.reap`` (worker supervisors run it too)."""
    while True:
        await asyncio.sleep(ctx.settings.reaper_interval_s)
        try:
            await run_in_threadpool(reaper.reap, ctx)
        except Exception:
            log.exception("the lost-job reaper failed; retrying")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = ServiceContext.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(validation.warm_up)  # so that the first job posted is not a second slower
        reaper = asyncio.create_task(reap_lost_jobs(ctx))
        try:
            yield
        finally:
            reaper.cancel()
            await ctx.async_client.aclose()

    app = FastAPI(
        title="GIF service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.web.docs serves /docs and /redoc with their assets (no CDN)
        redoc_url=None,
    )
    docs.install(app)
    app.state.context = ctx
    app.state.metrics = job_registry(ctx)
    problems.install(app)
    app.add_middleware(
        BodyLimit,
        limits=BodyLimits(
            default_bytes=settings.max_json_bytes,
            upload_bytes=settings.max_upload_bytes,
            upload_paths=frozenset({"/v1/models", "/v1/datasets"}),
            idle_timeout_s=settings.body_idle_timeout_s,
            min_bytes_per_s=settings.body_min_bytes_per_s,
        ),
    )
    app.add_middleware(HttpMetrics, registry=app.state.metrics)
    app.include_router(health.router)
    routers = (architectures.router, uploads.models, uploads.datasets, uploads.dataset_uploads, jobs.router)
    for router in (*routers, workers.router, usage.router):
        app.include_router(
            router,
            dependencies=[Depends(caller), Depends(known_query_parameters)],
            responses=problems.responses("unauthorized"),
        )
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every error response a ``Problem`` (FastAPI documents its own 422 body otherwise), and
    the answers every route may give whatever its parameters: a 422 for an unknown query parameter, a 413 for a body
    past its cap, a 408 for one that comes too slowly."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = schema["components"]["schemas"]
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Problem"] = Problem.model_json_schema()
        for path, item in schema["paths"].items():
            for operation in item.values():
                answers = operation["responses"]
                if "application/json" in answers.get("422", {}).get("content", {}) or (
                    path.startswith("/v1/") and "422" not in answers
                ):  # every /v1 operation refuses unknown query parameters with a 422
                    answers["422"] = problems.responses("validation-error")[422]
                if "requestBody" in operation:  # BodyLimit caps every body and its pace
                    answers.setdefault("413", problems.responses("payload-too-large")[413])
                    answers.setdefault("408", problems.responses("request-timeout")[408])
        app.openapi_schema = schema
    return app.openapi_schema
