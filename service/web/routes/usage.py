"""The caller's own usage and limits (``service.core.quotas``): what it has stored and running, and what it may add."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.web.auth import Caller
from service.web.dependencies import Context

router = APIRouter(prefix="/v1/usage", tags=["usage"])


class Measured(BaseModel):
    usage: int
    limit: int | None = Field(description="null: no limit (the GIF_QUOTA_* setting is unset).")


class Rate(BaseModel):
    limit: int | None = Field(description="null: no limit.")
    available: float | None = Field(description="Possible now (the token bucket's level); null: no limit.")


class Usage(BaseModel):
    active_jobs: Measured = Field(description="Jobs queued or running (GIF_QUOTA_ACTIVE_JOBS).")
    stored_bytes: Measured = Field(description="Bytes of models and datasets, edited models included.")
    submits_per_minute: Rate = Field(description="Job submits (GIF_QUOTA_SUBMITS_PER_MINUTE).")
    requests_per_second: Rate = Field(description="Requests on the /v1 routes (GIF_QUOTA_REQUESTS_PER_SECOND).")
    jobs: dict[str, int] = Field(description="Jobs by status.")
    models: int
    datasets: int


@router.get("", summary="Your usage and limits: active jobs, stored bytes, submits per minute, requests per second")
def usage(owner: Caller, ctx: Context) -> Usage:
    limits, quotas = ctx.quotas.limits, ctx.quotas
    jobs = ctx.jobs.count_by_status(owner)
    return Usage(
        active_jobs=Measured(usage=jobs["queued"] + jobs["running"], limit=limits.active_jobs),
        stored_bytes=Measured(usage=quotas.stored_bytes(owner), limit=limits.stored_bytes),
        submits_per_minute=Rate(limit=limits.submits_per_minute, available=quotas.submits_available(owner)),
        requests_per_second=Rate(limit=limits.requests_per_second, available=quotas.requests_available(owner)),
        jobs=jobs,
        models=ctx.catalog.count("model", owner),
        datasets=ctx.catalog.count("dataset", owner),
    )
