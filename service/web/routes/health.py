"""Liveness, readiness and Prometheus metrics: open without an API key (probes and scrapers carry none)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service.core.context import ServiceContext
from service.core.errors import ServiceError
from service.core.storage.base import is_storage_full
from service.web.dependencies import Context
from service.web.problems import responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis and the artifact store are reachable",
    description='"ready" when a healthy worker also listens on the queue and the store has room; "degraded" (still '
    "200: the API works, polls and downloads are served) with the reason when none does, e.g. every worker is "
    'unhealthy or none runs (jobs wait), or when the store\'s disk is "full" or "low on space" (less free than '
    "GIF_MIN_FREE_BYTES: uploads are refused and jobs fail storage-full until space is freed).",
    responses=responses("service-unavailable"),
)
def readyz(ctx: Context) -> dict[str, str]:
    try:
        ctx.client.ping()
    except Exception as exc:
        raise ServiceError("service-unavailable", f"Redis is unreachable: {exc}") from None
    storage, storage_problem = _storage_state(ctx)
    workers_problem = ctx.fleet.health(ctx.settings.queue_name)
    problems = [p for p in (storage_problem, workers_problem) if p]
    state = {
        "status": "degraded" if problems else "ready",
        "redis": "ok",
        "storage": storage,
        "workers": "none healthy" if workers_problem else "ok",
    }
    return state | ({"reason": "; ".join(problems)} if problems else {})


def _storage_state(ctx: ServiceContext) -> tuple[str, str | None]:
    """The storage state, "ok" or "full" / "low on space" with the reason: the API still serves what is stored, so
    a store without room makes a degraded service, not an unready one; any other failure to write it is a 503. Read
    live on every call: readiness comes back as soon as space is freed."""
    try:
        ctx.artifacts.check()
    except OSError as exc:
        if not is_storage_full(exc):
            raise ServiceError("service-unavailable", f"the artifact store is not writable: {exc}") from None
        return "full", "the artifact store's disk is full: uploads are refused and jobs fail storage-full"
    reserve = ctx.settings.min_free_bytes
    if reserve and (free := ctx.artifacts.free_bytes()) < reserve:
        return "low on space", (
            f"the artifact store's disk has {free} bytes free, {reserve - free} short of GIF_MIN_FREE_BYTES "
            f"({reserve}): uploads are refused and jobs fail storage-full until space is freed"
        )
    return "ok", None


@router.get(
    "/metrics",
    summary="Prometheus metrics: jobs by status, job durations, queue depth, HTTP requests",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
