"""The fleet: every live worker, its device and what it is doing (``service.core.fleet``)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.core.fleet import WorkerInfo
from service.web.dependencies import Context

router = APIRouter(prefix="/v1/workers", tags=["workers"])


class Fleet(BaseModel):
    workers: list[WorkerInfo]
    healthy: bool = Field(description="A healthy worker listens on this API's queue (jobs submitted here will run).")
    reason: str | None = Field(None, description="Why jobs submitted here would wait, when none is healthy.")


@router.get(
    "",
    summary="Live workers: host, device, state (idle, warming, running a job, unhealthy and why), jobs done",
)
def list_workers(ctx: Context) -> Fleet:
    reason = ctx.fleet.health(ctx.settings.queue_name)
    return Fleet(workers=ctx.fleet.workers(), healthy=reason is None, reason=reason)
