"""Liveness, readiness and Prometheus metrics: open without an API key (probes and scrapers carry none)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service.core.errors import ServiceError
from service.web.dependencies import Context
from service.web.problems import responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis and the artifact store are reachable",
    description='"ready" when a healthy worker also listens on the queue; "degraded" (still 200: the API works, '
    "jobs wait) with the reason when none does, e.g. every worker is unhealthy or none runs.",
    responses=responses("service-unavailable"),
)
def readyz(ctx: Context) -> dict[str, str]:
    try:
        ctx.client.ping()
    except Exception as exc:
        raise ServiceError("service-unavailable", f"Redis is unreachable: {exc}") from None
    try:
        ctx.artifacts.store.check()
    except OSError as exc:
        raise ServiceError("service-unavailable", f"the artifact store is not writable: {exc}") from None
    if reason := ctx.fleet.health(ctx.settings.queue_name):
        return {"status": "degraded", "redis": "ok", "storage": "ok", "workers": "none healthy", "reason": reason}
    return {"status": "ready", "redis": "ok", "storage": "ok", "workers": "ok"}


@router.get(
    "/metrics",
    summary="Prometheus metrics: jobs by status, job durations, queue depth, HTTP requests",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
