"""Jobs: submit (checked against model and data at once), list, poll, cancel, download the edited weights."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from gif.report import render_report
from gif.spec import Method
from service.core.errors import ServiceError
from service.core.jobs import JobRecord, JobStatus
from service.web.auth import Caller
from service.web.dependencies import Context, OwnedJob, Pagination
from service.web.operations import cancel_job, submit_idempotent
from service.web.problems import responses
from service.web.schemas import JOB_EXAMPLES, JobOut, JobRequest, Page

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
not_found = responses("not-found")
# The report runs no scripts and loads nothing: a browser is told so, whatever a job's strings contain.
REPORT_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}


def job_response(record: JobRecord, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """The job resource, serialised directly: records are written by this service, and polling must be cheap."""
    return JSONResponse(record.public(), status_code=status_code, headers=headers)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit an edit job",
    description="The job is checked against its model and data before it is queued: unknown ids, "
    "classes or indices out of range, labels the model does not have, an empty forget set or data of the "
    "wrong shape are refused here with a 422 that names the field. Where the server sets per-key limits "
    "(GET /v1/usage), a key with GIF_QUOTA_ACTIVE_JOBS jobs queued or running gets a 409 and one past "
    "GIF_QUOTA_SUBMITS_PER_MINUTE a 429, each with Retry-After and a `quota` member naming the limit.",
    responses={
        **responses(
            "unknown-reference",
            "invalid-spec",
            "validation-error",
            "bad-request",
            "unsupported-media-type",
            "idempotency-key-reused",
            "active-jobs-limit",
            "rate-limited",
            "service-unavailable",
        ),
        202: {"headers": {"Location": {"description": "/v1/jobs/{id}", "schema": {"type": "string"}}}},
        200: {"description": "An Idempotency-Key seen before with the same body: the job it created."},
    },
)
def submit(
    body: Annotated[JobRequest, Body(openapi_examples=JOB_EXAMPLES)],
    owner: Caller,
    ctx: Context,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Makes retries safe: the same key and body return the job the first request created "
            "(200) for a day (GIF_IDEMPOTENCY_TTL_S); the same key with another body is a 422.",
        ),
    ] = None,
) -> Response:
    record, new = submit_idempotent(ctx, owner, body, idempotency_key)
    return job_response(record, 202 if new else 200, {"Location": f"/v1/jobs/{record.id}"})


@router.get("", summary="Your jobs, newest first")
def list_jobs(
    owner: Caller,
    ctx: Context,
    page: Pagination,
    status: Annotated[JobStatus | None, Query(description="Only jobs with this status.")] = None,
) -> Page[JobOut]:
    items, cursor = ctx.jobs.page(owner, status, page.limit, page.cursor)
    return Page[JobOut](items=[JobOut.model_validate(r.public()) for r in items], next_cursor=page.next(cursor))


@router.get(
    "/{job_id}", response_model=JobOut, summary="One job: status, progress, result or error", responses=not_found
)
async def read(record: OwnedJob) -> Response:
    return job_response(record)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job",
    description="A queued job is cancelled at once (200). A running job is asked to stop (202, "
    "cancel_requested: true) and turns cancelled within about a second, at its next progress report.",
    responses={**not_found, **responses("conflict"), 202: {"description": "Cancel requested"}},
)
def cancel(job: OwnedJob, ctx: Context) -> Response:
    record, done = cancel_job(ctx, job.id)
    return job_response(record, 200 if done else 202)


@router.get(
    "/{job_id}/checkpoint",
    summary="The edited weights (safetensors), or the edited exported program (?format=pt2)",
    response_class=FileResponse,
    description="409 until the job succeeded. The ETag is the file's sha256 (result.checkpoint.sha256, or "
    "result.program.sha256 for ?format=pt2, which only jobs on an exported program have). A job that compared "
    "several methods (spec methods) serves the chosen one's (result.method) by default and any other one's with "
    "?method=<name> (its result.comparison entry's checkpoint.sha256 or program.sha256); a method the job did not "
    "run is a 409.",
    responses={
        **not_found,
        **responses("conflict", "service-unavailable"),
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        304: {"description": "If-None-Match matched the sha256"},
        307: {"description": "S3 storage with GIF_S3_PRESIGN_EXPIRY_S: a presigned URL of the same bytes"},
    },
)
def checkpoint(
    record: OwnedJob,
    ctx: Context,
    if_none_match: Annotated[str | None, Header()] = None,
    file_format: Annotated[
        Literal["safetensors", "pt2"],
        Query(
            alias="format", description="safetensors (the state dict), or pt2 (the edited program, for exported models)"
        ),
    ] = "safetensors",
    method: Annotated[
        Method | None,
        Query(
            description="A job of several methods (spec methods): the method whose edited model to download; "
            "default: the chosen one (result.method)."
        ),
    ] = None,
) -> Response:
    if record.status != "succeeded" or record.result is None:
        raise ServiceError("conflict", f"the job is {record.status}; its checkpoint exists once it succeeded")
    try:
        output = record.result.output_of(method, file_format)
    except KeyError:
        ran = ", ".join(c.method for c in record.result.comparison or []) or record.result.method
        raise ServiceError("conflict", f"the job did not run method {method}; it ran {ran}") from None
    if output is None and file_format == "pt2":
        raise ServiceError("conflict", "only jobs on an exported (.pt2) model have an edited program; use safetensors")
    if output is None:
        raise ServiceError("conflict", f"the job kept no checkpoint of method {method}")
    sha256 = output.sha256
    etag = f'"{sha256}"'
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    chosen = method is None or method == record.result.method
    filename = f"{record.id}.{file_format}" if chosen else f"{record.id}.{method}.{file_format}"
    blob = ctx.artifacts.download(sha256, filename)
    if blob.url is not None:
        return RedirectResponse(blob.url, status_code=307, headers={"ETag": etag})
    if blob.path is not None:
        return FileResponse(blob.path, media_type="application/octet-stream", filename=filename, headers={"ETag": etag})
    assert blob.chunks is not None
    return StreamingResponse(
        blob.chunks,
        media_type="application/octet-stream",
        headers={
            "ETag": etag,
            "Content-Length": str(blob.size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


@router.get(
    "/{job_id}/report",
    summary="The job's report: one self-contained HTML page",
    response_class=HTMLResponse,
    description="409 until the job succeeded. The request and settings; before / after / retrained metrics; "
    "per-class accuracy, the solver's residual, the step search and the selection per layer as inline SVG; "
    "warnings. No scripts and no external assets: the page can be saved and mailed as it is.",
    responses={**not_found, **responses("conflict"), 200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
def report(record: OwnedJob) -> Response:
    if record.status != "succeeded" or record.result is None:
        raise ServiceError("conflict", f"the job is {record.status}; its report exists once it succeeded")
    context = [("job", record.id), ("model", str(record.spec.get("model_id"))), ("finished", str(record.finished_at))]
    page = render_report(record.result, record.spec, context)
    return HTMLResponse(page, headers=REPORT_HEADERS)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job and what only it holds",
    description="The job's record, its checkpoint and report, and its hold on its inputs: a file goes when nothing "
    "else holds it, so the model registered from the job (result.model_id) and the uploads it used stay until they "
    "are deleted themselves. A queued or running job is a 409: cancel it first. With GIF_RETENTION_JOBS_S, "
    "finished jobs are deleted this way once that long has passed.",
    responses={**not_found, **responses("conflict")},
)
def delete(record: OwnedJob, ctx: Context) -> Response:
    if not ctx.jobs.delete(record.id):
        raise ServiceError("conflict", f"the job is {record.status}; cancel it first")
    return Response(status_code=204)
