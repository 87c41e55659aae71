"""What the routes do: accept uploads, submit and cancel jobs. Routers stay thin; this is HTTP-free logic:
an upload arrives as its content type and an async byte stream, and errors are ``ServiceError``s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anyio.to_thread import run_sync as run_in_thread

from gif.errors import GifError
from gif.io.files import sha256_file
from gif.io.images import ImageLimits, image_archive_kind
from gif.models.checkpoints import model_architecture, model_format
from gif.models.registry import ArchitectureSpec
from service.core.catalog import Kind, UploadRecord
from service.core.context import ServiceContext
from service.core.errors import ServiceError
from service.core.idempotency import fingerprint
from service.core.jobs import InputRef, JobRecord
from service.core.queue import enqueue_job, withdraw_job
from service.core.storage.base import StoreUnavailable
from service.core.storage.s3 import S3ArtifactStore
from service.core.storage.sources import DirectUploads, allowed_source, stage_source
from service.core.webhooks import notify_end_in_background, target_problem
from service.web.schemas import JobRequest
from service.web.uploads import Upload, receive_upload, upload_limiter
from service.web.validation import (
    DATA_INPUTS,
    check_job,
    convert_image_dataset,
    inspect_dataset,
    inspect_model,
    parse_architecture,
    parse_classes,
    parse_dataset_reference,
    parse_input_transform,
)

log = logging.getLogger("service.web.operations")
MAX_FILENAME_CHARS = 255


@contextmanager
def blame(pointer: str) -> Iterator[None]:
    """Attach the engine errors raised inside to a field of the request."""
    try:
        yield
    except GifError as exc:
        raise ServiceError.from_engine(exc, pointer) from None


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


async def read_small_body(body: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """A JSON body, refused (413) once it passes ``max_bytes``: the upload route's larger cap is not for JSON."""
    read = bytearray()
    async for chunk in body:
        read += chunk
        if len(read) > max_bytes:
            raise ServiceError("payload-too-large", f"a JSON body may have at most {max_bytes} bytes")
    return bytes(read)


def _require(upload: Upload, fields: tuple[str, ...]) -> None:
    missing = (["file"] if not upload.has_file else []) + [f for f in fields if f not in upload.fields]
    if missing:
        raise ServiceError(
            "validation-error",
            f"missing form field(s): {', '.join(missing)}",
            [{"pointer": f"/{name}", "detail": "required"} for name in missing],
        )


def _file_facts(upload: Upload) -> dict[str, Any]:
    filename = upload.filename[:MAX_FILENAME_CHARS] if upload.filename else None
    return {"sha256": upload.sha256, "size_bytes": upload.size_bytes, "filename": filename}


async def upload_model(
    ctx: ServiceContext, owner: str, content_type: str | None, declared_bytes: int | None, body: AsyncIterator[bytes]
) -> UploadRecord:
    """Stream the weights to a staging file, check them against the architecture, then store them."""
    await admit_upload(ctx, owner, declared_bytes)
    with ctx.artifacts.staging_file() as staged:
        upload = await receive_upload(content_type, body, staged, "file", frozenset({"architecture", "input"}))
        _require(upload, ())
        given = upload.fields.get("architecture")
        architecture = parse_architecture(given, "/architecture") if given is not None else None
        transform = parse_input_transform(upload.fields.get("input"))
        with blame("/file"):
            file_format = await run_in_thread(model_format, staged, limiter=upload_limiter())
        with blame("/architecture"):
            resolved = ArchitectureSpec.model_validate(model_architecture(file_format, architecture))
        with blame("/file"):
            facts = await run_in_thread(
                inspect_model, staged, resolved, ctx.settings.max_model_bytes, limiter=upload_limiter()
            )
        if transform is not None:
            facts["input_transform"] = transform.model_dump(exclude_none=True)
        return await _store(ctx, "model", owner, upload, facts)


async def upload_dataset(
    ctx: ServiceContext, owner: str, content_type: str | None, declared_bytes: int | None, body: AsyncIterator[bytes]
) -> UploadRecord:
    """Stream the data to a staging file, read and check it, record its shape and label counts, then store it; or,
    for a JSON body ``{"url": "s3://…"}``, register an allowed object of the S3 store by reference."""
    if is_json(content_type):
        reference = parse_dataset_reference(await read_small_body(body, ctx.settings.max_json_bytes))
        return await register_dataset_url(ctx, owner, reference.url, reference.classes)
    if not (content_type or "").lower().startswith("multipart/form-data"):
        shown = (content_type or "none").split(";")[0]
        raise ServiceError(
            "unsupported-media-type", f"expected multipart/form-data (a file) or application/json (a URL), got {shown}"
        )
    await admit_upload(ctx, owner, declared_bytes)
    with ctx.artifacts.staging_file() as staged:
        upload = await receive_upload(content_type, body, staged, "file", frozenset({"classes"}))
        _require(upload, ())
        return await _register_dataset(ctx, owner, upload, parse_classes(upload.fields.get("classes")), {}, "/file")


async def register_dataset_url(ctx: ServiceContext, owner: str, url: str, classes: list[str] | None) -> UploadRecord:
    """Stream an allowed ``s3://`` object (or prefix of shards) into a bounded staging file, then check, convert and
    store it exactly as an uploaded file, recording the URL it came from."""
    source = allowed_source(url, ctx.settings, ctx.artifacts.store)
    await admit_upload(ctx, owner, None)
    assert isinstance(ctx.artifacts.store, S3ArtifactStore)  # allowed_source refuses any other store
    with ctx.artifacts.staging_file() as staged:
        filename = await run_in_thread(
            stage_source, ctx.artifacts.store, source, staged, ctx.settings.max_upload_bytes, limiter=upload_limiter()
        )
        upload = await _staged_upload(staged, filename)
        return await _register_dataset(ctx, owner, upload, classes, {"source_url": source.url}, "/url")


async def _staged_upload(staged: Path, filename: str | None) -> Upload:
    sha256 = await run_in_thread(sha256_file, staged, limiter=upload_limiter())
    return Upload(staged, has_file=True, filename=filename, sha256=sha256, size_bytes=staged.stat().st_size)


async def _register_dataset(
    ctx: ServiceContext, owner: str, upload: Upload, classes: list[str] | None, extra: dict[str, Any], pointer: str
) -> UploadRecord:
    """Check a received dataset file (tensors, or an image archive converted once) and store it with its facts;
    ``pointer`` is the request field its problems are reported at."""
    if await run_in_thread(image_archive_kind, upload.path) is not None:
        return await _store_images(ctx, owner, upload, classes, extra, pointer)
    if classes is not None:
        raise ServiceError(
            "validation-error",
            "classes are named by image archives only",
            [{"pointer": "/classes", "detail": "tensors name classes by their labels; leave it out"}],
        )
    with blame(pointer):
        facts = await run_in_thread(
            inspect_dataset, upload.path, ctx.settings.max_dataset_bytes, limiter=upload_limiter()
        )
    return await _store(ctx, "dataset", owner, upload, {**facts, **extra})


async def _store_images(
    ctx: ServiceContext, owner: str, upload: Upload, classes: list[str] | None, extra: dict[str, Any], pointer: str
) -> UploadRecord:
    """Decode an uploaded image archive into uint8 tensors and store those (the archive itself is not kept)."""
    limits = ImageLimits(ctx.settings.max_image_pixels, ctx.settings.max_dataset_bytes)
    with ctx.artifacts.staging_file() as converted:
        with blame(pointer):
            facts = await run_in_thread(
                convert_image_dataset, upload.path, converted, classes, limits, limiter=upload_limiter()
            )
        stored = Upload(
            converted, filename=upload.filename, sha256=facts.pop("sha256"), size_bytes=facts.pop("size_bytes")
        )
        return await _store(ctx, "dataset", owner, stored, {**facts, **extra, "source_sha256": upload.sha256})


def _direct_uploads(ctx: ServiceContext) -> DirectUploads:
    return DirectUploads(ctx.artifacts.store, ctx.artifacts.client, ctx.settings)


async def start_direct_upload(
    ctx: ServiceContext, owner: str, size_bytes: int, filename: str | None, classes: list[str] | None
) -> dict[str, Any]:
    """Open a presigned multipart upload of ``size_bytes`` into the S3 store, admitted as a body of that size."""
    uploads = _direct_uploads(ctx)
    uploads.require_s3()
    if size_bytes > ctx.settings.max_upload_bytes:
        raise ServiceError(
            "payload-too-large", f"{size_bytes} bytes is over the {ctx.settings.max_upload_bytes} an upload may be"
        )
    await admit_upload(ctx, owner, size_bytes)
    upload = await run_in_thread(uploads.start, owner, size_bytes, filename, classes)
    return await run_in_thread(uploads.state, upload)


async def direct_upload_state(ctx: ServiceContext, owner: str, upload_id: str) -> dict[str, Any]:
    """Which parts S3 holds, and fresh URLs for the missing ones: how a client resumes."""
    uploads = _direct_uploads(ctx)
    return await run_in_thread(uploads.state, uploads.get(upload_id, owner))


async def abort_direct_upload(ctx: ServiceContext, owner: str, upload_id: str) -> None:
    uploads = _direct_uploads(ctx)
    await run_in_thread(uploads.forget, uploads.get(upload_id, owner))


async def complete_direct_upload(ctx: ServiceContext, owner: str, upload_id: str) -> UploadRecord:
    """Complete the multipart upload, then check and store it as an uploaded file. The incoming object is deleted
    once stored or refused; only a store that failed (503) keeps it, so that completing again may succeed."""
    uploads = _direct_uploads(ctx)
    upload = uploads.get(upload_id, owner)
    await run_in_thread(uploads.assemble, upload)
    try:
        await admit_upload(ctx, owner, upload.size_bytes)
        with ctx.artifacts.staging_file() as staged:
            await run_in_thread(
                stage_source,
                uploads.require_s3(),
                uploads.source(upload),
                staged,
                ctx.settings.max_upload_bytes,
                limiter=upload_limiter(),
            )
            received = await _staged_upload(staged, upload.filename)
            record = await _register_dataset(ctx, owner, received, upload.classes, {}, "/file")
    except StoreUnavailable:
        raise
    except BaseException:
        await run_in_thread(uploads.forget, upload)
        raise
    await run_in_thread(uploads.forget, upload)
    return record


async def admit_upload(ctx: ServiceContext, owner: str, declared_bytes: int | None) -> None:
    """Refuse an upload before its body is read when it cannot be kept (``declared_bytes``: the Content-Length): past
    the key's stored-bytes quota (403), or leaving the disk less than GIF_MIN_FREE_BYTES (507). A body past the upload
    cap never gets here: ``BodyLimit`` answers it with a 413 first."""
    await run_in_thread(ctx.quotas.check_room, owner, declared_bytes)
    await run_in_thread(ctx.artifacts.require_room, declared_bytes or 0, ctx.settings.min_free_bytes, "this upload")


async def _store(ctx: ServiceContext, kind: Kind, owner: str, upload: Upload, facts: dict[str, Any]) -> UploadRecord:
    record = await run_in_thread(ctx.catalog.add, kind, owner, upload.path, {**facts, **_file_facts(upload)})
    log.info(
        "%s stored", kind, extra={f"{kind}_id": record.id, "sha256": record.sha256, "size_bytes": record.size_bytes}
    )
    return record


def submit_idempotent(ctx: ServiceContext, owner: str, body: JobRequest, key: str | None) -> tuple[JobRecord, bool]:
    """``submit_job``, or with an ``Idempotency-Key`` the job that key already names; (the job, whether new)."""
    if key is None:
        return submit_job(ctx, owner, body), True
    body_fingerprint = fingerprint(body.model_dump(mode="json"))
    existing = ctx.idempotency.claim(owner, key, body_fingerprint)
    if existing is not None:
        record = ctx.jobs.get(existing)
        if record is None:  # deleted since: the key names nothing any more
            raise ServiceError("conflict", f"the job {existing} this Idempotency-Key named was deleted; use a new key")
        return record, False
    try:
        record = submit_job(ctx, owner, body)
    except BaseException:
        ctx.idempotency.release(owner, key)
        raise
    ctx.idempotency.record(owner, key, body_fingerprint, record.id)
    return record, True


def submit_job(ctx: ServiceContext, owner: str, body: JobRequest) -> JobRecord:
    """Check the job against its model and data now (a bad job is a 4xx, not a failed job later), then queue it.
    A submit spends one of the key's submits per minute first, refused or not: the limit bounds requests."""
    ctx.quotas.take_submit(owner)
    model = ctx.catalog.get("model", body.model_id, owner)
    datasets = {
        role: ctx.catalog.get("dataset", getattr(body, field), owner)
        for role, field in DATA_INPUTS.items()
        if getattr(body, field) is not None
    }
    unknown = ([{"pointer": "/model_id", "detail": f"no model {body.model_id!r}"}] if model is None else []) + [
        {"pointer": f"/{DATA_INPUTS[role]}", "detail": f"no dataset {getattr(body, DATA_INPUTS[role])!r}"}
        for role, record in datasets.items()
        if record is None
    ]
    if unknown:
        raise ServiceError("unknown-reference", "the job refers to uploads that do not exist", unknown)
    assert model is not None
    if body.notify is not None and (problem := target_problem(str(body.notify.url), ctx.settings)):
        raise ServiceError(
            "validation-error", "the job cannot notify this URL", [{"pointer": "/notify/url", "detail": problem}]
        )
    found = {role: record for role, record in datasets.items() if record is not None}
    check_job(body, model, found)
    inputs = {
        "model": InputRef(
            id=model.id, sha256=model.sha256, architecture=model.architecture, input_transform=model.input_transform
        )
    }
    inputs |= {role: InputRef(id=record.id, sha256=record.sha256) for role, record in found.items()}
    waits = ctx.fleet.health(ctx.settings.queue_name)
    warnings = [f"{waits}: the job waits in the queue until a healthy worker takes it"] if waits else None
    record = ctx.jobs.create(
        owner, body.model_dump(mode="json"), inputs, ctx.settings.queue_name, warnings, ctx.settings.quota_active_jobs
    )
    if record is None:
        raise ServiceError("conflict", "an input of the job was deleted while the job was submitted")
    ctx.catalog.touch(("model", model.id), *(("dataset", dataset.id) for dataset in found.values()))
    enqueue_job(ctx.queue, record.id, ctx.settings.job_timeout_s)
    log.info("job queued", extra={"job_id": record.id, "request": body.request.kind, "method": body.method})
    return record


def cancel_job(ctx: ServiceContext, job_id: str) -> tuple[JobRecord, bool]:
    """Cancel a queued job at once, or ask a running one to stop (the caller's own job: ``OwnedJob`` checked that);
    (the job, whether it is cancelled already)."""
    previous = ctx.jobs.cancel(job_id)
    if previous == "queued":
        withdraw_job(ctx.queue, job_id)
        notify_end_in_background(ctx, job_id)
    elif previous != "running":
        raise ServiceError("conflict", f"the job is {previous}; only queued or running jobs can be cancelled")
    log.info("job cancel %s", "done" if previous == "queued" else "requested", extra={"job_id": job_id})
    job = ctx.jobs.get(job_id)
    if job is None:  # deleted in between: it had ended
        raise ServiceError("not-found", f"no job {job_id!r}")
    return job, previous == "queued"
