"""The server-side architecture registry (``gif.models.registry``): what can be uploaded, parameter by parameter."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from gif.errors import UnknownArchitectureError
from gif.models.registry import architectures, lookup, parameter_listing
from service.core.errors import ServiceError
from service.web.dependencies import Pagination
from service.web.problems import responses
from service.web.schemas import ArchitectureInfo, Page, ParameterListing

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get(
    "",
    summary="The registry: name, family, description, config schema",
    description="In registry order (the paper's four, torchvision's, timm's), paginated like every list. "
    'A .pt2 program needs no entry: it is uploaded with no architecture (or {"name": "exported"}).',
)
def list_architectures(
    page: Pagination,
    family: Annotated[
        Literal["paper", "torchvision", "timm"] | None, Query(description="Only this family of architectures.")
    ] = None,
    q: Annotated[str | None, Query(max_length=100, description="Only names containing this, in any case.")] = None,
) -> Page[ArchitectureInfo]:
    matching = [a for a in architectures(family) if q is None or q.lower() in a.name.lower()]
    start = page.cursor or 0
    end = start + page.limit
    items = [
        ArchitectureInfo(name=a.name, family=a.family, description=a.description, config_schema=a.config_schema())
        for a in matching[start:end]
    ]
    return Page(items=items, next_cursor=page.next(end if end < len(matching) else None))


@router.get(
    "/{name}",
    summary="Parameters of one architecture and config, in forward order",
    responses=responses("not-found", "unknown-architecture"),
)
def describe_architecture(
    name: str,
    config: Annotated[
        str, Query(description="The config as URL-encoded JSON.", examples=['{"sizes": [64, 32, 10]}'])
    ] = "{}",
) -> ParameterListing:
    if lookup(name) is None:
        raise ServiceError("not-found", f"unknown architecture {name!r}; GET /v1/architectures lists them")
    try:
        parsed = json.loads(config)
    except json.JSONDecodeError as exc:
        raise ServiceError(
            "validation-error", "config is not valid JSON", [{"parameter": "config", "in": "query", "detail": exc.msg}]
        ) from None
    try:
        return ParameterListing.model_validate(parameter_listing({"name": name, "config": parsed}))
    except UnknownArchitectureError as exc:
        errors = [{"parameter": "config", "in": "query", "detail": problem} for problem in exc.problems]
        raise ServiceError(exc.code, str(exc), errors) from None
