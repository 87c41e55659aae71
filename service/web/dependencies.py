"""FastAPI dependencies: the process's ``ServiceContext`` and pagination parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from service.core.context import ServiceContext
from service.core.errors import ServiceError


async def context(request: Request) -> ServiceContext:
    """``async`` so that FastAPI calls it inline rather than in the thread pool."""
    return request.app.state.context


Context = Annotated[ServiceContext, Depends(context)]


class PageParams:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=200, description="Items per page (newest first).")] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    ):
        if cursor is not None and not cursor.isdigit():
            raise ServiceError(
                "validation-error",
                "invalid cursor",
                [{"parameter": "cursor", "in": "query", "detail": "use next_cursor of a previous page"}],
            )
        self.limit = limit
        self.cursor = int(cursor) if cursor is not None else None

    @staticmethod
    def next(cursor: int | None) -> str | None:
        return str(cursor) if cursor is not None else None


Pagination = Annotated[PageParams, Depends()]
