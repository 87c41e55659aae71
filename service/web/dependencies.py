"""FastAPI dependencies: the process's ``ServiceContext``, pagination parameters, and the caller's own job, model or
dataset named by the path (a 404 problem when it does not exist or belongs to another key).

No ``from __future__ import annotations`` here: ``owned_item`` builds a dependency per kind whose path parameter's
alias depends on the kind, and FastAPI must see that annotation evaluated, not as a string.
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.core.catalog import Kind, UploadRecord
from service.core.context import ServiceContext
from service.core.errors import ServiceError
from service.core.jobs import JobRecord
from service.web.auth import Caller


async def context(request: Request) -> ServiceContext:
    """``async`` so that FastAPI calls it inline rather than in the thread pool."""
    return request.app.state.context


Context = Annotated[ServiceContext, Depends(context)]


class PageParams:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=200, description="Items per page (newest first).")] = 50,
        cursor: Annotated[
            str | None,
            # ASCII digits only: str.isdigit() also admits "²", which int() refuses (a 500 a schema fuzzer found)
            Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page."),
        ] = None,
    ):
        self.limit = limit
        self.cursor = int(cursor) if cursor is not None else None

    @staticmethod
    def next(cursor: int | None) -> str | None:
        return str(cursor) if cursor is not None else None


Pagination = Annotated[PageParams, Depends()]


def _query_names(dependant: Dependant) -> set[str]:
    return {p.alias for p in dependant.query_params}.union(*(_query_names(d) for d in dependant.dependencies))


async def known_query_parameters(request: Request) -> None:
    """Refuse a query parameter the operation does not take: a misspelt filter (``?statu=failed``) would otherwise
    be ignored, and the caller would read every job as the ones asked for."""
    route = request.scope.get("route")
    known = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ServiceError(
            "validation-error",
            f"unknown query parameter(s): {', '.join(map(repr, unknown))}",
            [{"parameter": name, "in": "query", "detail": "not a parameter of this operation"} for name in unknown],
        )


async def owned_job(job_id: str, owner: Caller, ctx: Context) -> JobRecord:
    """The caller's job named by ``{job_id}``, read on the asyncio client (the route clients poll)."""
    record = await ctx.jobs.poll(job_id, owner, ctx.async_client)
    if record is None:
        raise ServiceError("not-found", f"no job {job_id!r}")
    return record


OwnedJob = Annotated[JobRecord, Depends(owned_job)]


def owned_item(kind: Kind) -> Callable[..., UploadRecord]:
    """A dependency giving the caller's ``kind`` (model or dataset) named by the path's ``{<kind>_id}``."""

    def load(item_id: Annotated[str, Path(alias=f"{kind}_id")], owner: Caller, ctx: Context) -> UploadRecord:
        """Synchronous, so FastAPI runs it in its thread pool: the catalog reads Redis with a blocking client."""
        record = ctx.catalog.get(kind, item_id, owner)
        if record is None:
            raise ServiceError("not-found", f"no {kind} {item_id!r}")
        return record

    return load
