"""Uploaded models and datasets: POST (multipart, streamed), list, GET and DELETE; the same shape for both.

No ``from __future__ import annotations`` here: the routes are built per kind inside ``catalog_router``, and
FastAPI must see their annotations (which name that kind's dependency) evaluated, not as strings.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from service.core.catalog import Kind, UploadRecord
from service.core.context import ServiceContext
from service.web.auth import Caller
from service.web.dependencies import Context, Pagination, owned_item
from service.web.operations import (
    abort_direct_upload,
    complete_direct_upload,
    direct_upload_state,
    start_direct_upload,
    upload_dataset,
    upload_model,
)
from service.web.problems import responses
from service.web.schemas import DatasetOut, ModelOut, Page
from service.web.validation import DatasetReference, parse_classes

FILE_PART = {"type": "string", "format": "binary"}
INPUT_PART = {
    "type": "string",
    "description": "Optional: the preprocessing the model was trained with, as JSON in torchvision's preset "
    "vocabulary (resize: the shorter side, bilinear and antialiased; crop: a centre crop; mean and std: the "
    "normalisation; channels: 1 or 3). The worker applies it to the data of every job of this model, on the job's "
    "device; images are read as floats in [0, 1] first, like ToTensor.",
    "example": '{"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}',
}
ARCHITECTURE_PART = {
    "type": "string",
    "description": 'The architecture as JSON: {"name": …, "config": {…}} (see GET /v1/architectures); '
    'leave it out (or give {"name": "exported"}) for a .pt2 program.',
    "example": '{"name": "mlp", "config": {"sizes": [64, 32, 10], "activation": "relu"}}',
}
CLASSES_PART = {
    "type": "string",
    "description": "Image archives only, optional: the class names as a JSON list, in label order (a folder not "
    "listed is refused; a listed class may have no images).",
    "example": '["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]',
}
UPLOAD_ERRORS = (
    "validation-error",
    "invalid-weights",
    "bad-request",
    "payload-too-large",
    "unsupported-media-type",
    "storage-quota-exceeded",
    "storage-full",
    "service-unavailable",
)
Uploader = Callable[[ServiceContext, str, str | None, int | None, AsyncIterator[bytes]], Awaitable[UploadRecord]]


def multipart(description: str, optional: tuple[str, ...] = (), **parts: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": parts, "required": [p for p in parts if p not in optional]}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


def with_json_body(body: dict[str, Any], model: type[BaseModel], description: str) -> dict[str, Any]:
    """``body`` (a multipart request body) that may also come as JSON of ``model``."""
    body["requestBody"]["content"]["application/json"] = {"schema": model.model_json_schema()}
    body["requestBody"]["description"] += "\n\n" + description
    return body


def catalog_router(
    kind: Kind, out: type[BaseModel], upload: Uploader, body: dict[str, Any], errors: tuple[str, ...]
) -> APIRouter:
    router = APIRouter(prefix=f"/v1/{kind}s", tags=[f"{kind}s"])
    not_found = responses("not-found")
    Owned = Annotated[UploadRecord, Depends(owned_item(kind))]
    item_path = f"/{{{kind}_id}}"

    @router.post(
        "",
        status_code=201,
        summary=f"Upload a {kind}",
        response_model=out,
        openapi_extra=body,
        responses=responses(*errors),
    )
    async def create(request: Request, owner: Caller, ctx: Context) -> Response:
        length = request.headers.get("content-length", "")
        declared = int(length) if length.isascii() and length.isdigit() else None
        record = await upload(ctx, owner, request.headers.get("content-type"), declared, request.stream())
        return JSONResponse(record.public(), status_code=201, headers={"Location": f"/v1/{kind}s/{record.id}"})

    @router.get("", summary=f"Your {kind}s, newest first", response_model=Page[out])  # type: ignore[valid-type]
    def list_items(owner: Caller, ctx: Context, page: Pagination) -> dict[str, Any]:
        items, cursor = ctx.catalog.page(kind, owner, page.limit, page.cursor)
        return {"items": [r.public() for r in items], "next_cursor": page.next(cursor)}

    @router.get(item_path, summary=f"One {kind}", response_model=out, responses=not_found)
    def read(record: Owned) -> dict[str, Any]:
        return record.public()

    @router.delete(
        item_path,
        status_code=204,
        summary=f"Delete a {kind}",
        description="Jobs that used it keep their copy of the file until they are deleted.",
        responses=not_found,
    )
    def delete(record: Owned, owner: Caller, ctx: Context) -> Response:
        ctx.catalog.delete(kind, record.id, owner)
        return Response(status_code=204)

    return router


models = catalog_router(
    "model",
    ModelOut,
    upload_model,
    multipart(
        "Weights (.safetensors, or a torch zip state dict) and their architecture; or a .pt2 program "
        "(torch.export.save, eval mode, a dynamic batch dimension) with no architecture: it is read by a "
        "validating loader that runs nothing from the file.",
        optional=("architecture", "input"),
        file=FILE_PART,
        architecture=ARCHITECTURE_PART,
        input=INPUT_PART,
    ),
    UPLOAD_ERRORS + ("unknown-architecture",),
)
DATASET_FORM = multipart(
    "Tensors: a .safetensors or .npz file holding x (float32 or uint8, N × sample shape), y (int64 labels, N) "
    "and optionally ids (integers; or, in safetensors metadata, a JSON list of names) by which requests may name "
    "examples. Images: an ImageFolder archive (.zip, .tar or .tar.gz of <class>/<image>, JPEG, PNG or WebP; "
    "classes indexed in sorted order unless `classes` is given) or a WebDataset shard (.tar: each image beside "
    "its label in .cls or .json); they are decoded once and stored as uint8 tensors, each image's id being its "
    "path (ImageFolder) or key (WebDataset).\n\n"
    "Examples, one per kind:\n\n"
    "- tensors: `curl -F file=@train.safetensors $GIF_SERVER/v1/datasets`\n"
    "- an ImageFolder zip (`cat/0001.png`, `dog/0002.jpg`, …): `curl -F file=@train.zip $GIF_SERVER/v1/datasets`\n"
    "- the same with its classes in label order: `curl -F file=@train.tar.gz "
    '-F \'classes=["cat", "dog"]\' $GIF_SERVER/v1/datasets`\n'
    "- a WebDataset shard (`000001.png` beside `000001.cls`): `curl -F file=@shard-000.tar $GIF_SERVER/v1/datasets`"
    "\n\nA folder is uploaded by the client (`Client.upload_dataset(folder)`, `gif submit --train-data DIR`) as a "
    "zip.",
    optional=("classes",),
    file=FILE_PART,
    classes=CLASSES_PART,
)
DATASET_BODY = with_json_body(
    DATASET_FORM,
    DatasetReference,
    'Or, where the artifact store is S3, a JSON body `{"url": "s3://bucket/key"}` (or `s3://bucket/prefix/` of '
    "WebDataset shards) registers an object the operator allowed (GIF_DATA_URL_ALLOWED) without sending it: the "
    "service streams it from the bucket and checks, converts and stores it as an uploaded file, recording "
    "`source_url`. Any other URL is refused with a 422 at `/url`; nothing outside those locations is fetched.\n\n"
    "- `curl -H 'Content-Type: application/json' -d '{\"url\": \"s3://datasets/train.zip\"}' "
    "$GIF_SERVER/v1/datasets`\n\nFiles of several GB go straight to the bucket: see POST /v1/dataset-uploads.",
)
datasets = catalog_router(
    "dataset",
    DatasetOut,
    upload_dataset,
    DATASET_BODY,
    UPLOAD_ERRORS[:1] + ("invalid-dataset",) + UPLOAD_ERRORS[2:],
)


class DirectUploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size_bytes: int = Field(ge=1, description="The file's exact size; the parts must add up to it.")
    filename: str | None = Field(None, max_length=255)
    classes: list[str] | None = Field(None, description="Image archives only: the class names in label order.")


class PartUrl(BaseModel):
    number: int
    url: str = Field(description="PUT the part's bytes here (no other header needed); keep the ETag S3 answers.")


class PartDone(BaseModel):
    number: int
    etag: str
    size_bytes: int


class DirectUploadOut(BaseModel):
    id: str
    size_bytes: int
    part_size_bytes: int = Field(description="Every part but the last has exactly this many bytes.")
    part_count: int
    expires_in_s: int = Field(description="The part URLs, and the upload, are valid this long.")
    parts_done: list[PartDone] = Field(description="The parts S3 holds (ListParts).")
    parts: list[PartUrl] = Field(description="A presigned URL for each part still missing.")


# Not under /v1/datasets: a path there of one segment would also match /v1/datasets/{dataset_id}.
dataset_uploads = APIRouter(prefix="/v1/dataset-uploads", tags=["datasets"])
DIRECT_UPLOAD = "/{upload_id}"
DIRECT_ERRORS = responses("not-found", "service-unavailable")


@dataset_uploads.post(
    "",
    status_code=201,
    summary="Start a presigned multipart dataset upload (S3 store)",
    description="For files of several GB: the parts go straight to the bucket over the presigned URLs, never "
    "through the API; after a dropped connection GET the upload to see which parts S3 holds and send only the "
    "others; then complete it. Admitted like an upload of `size_bytes` (quota, free disk, GIF_MAX_UPLOAD_BYTES). "
    "A service whose store is not S3 answers 409: upload the file to POST /v1/datasets instead.",
    response_model=DirectUploadOut,
    responses=responses(
        "validation-error",
        "bad-request",
        "conflict",
        "payload-too-large",
        "storage-quota-exceeded",
        "storage-full",
        "service-unavailable",
    ),
)
async def start_upload(body: DirectUploadIn, owner: Caller, ctx: Context) -> JSONResponse:
    classes = parse_classes(json.dumps(body.classes)) if body.classes is not None else None
    state = await start_direct_upload(ctx, owner, body.size_bytes, body.filename, classes)
    return JSONResponse(state, status_code=201, headers={"Location": f"/v1/dataset-uploads/{state['id']}"})


@dataset_uploads.get(
    DIRECT_UPLOAD,
    summary="A presigned upload: parts done and URLs for the rest",
    response_model=DirectUploadOut,
    responses=DIRECT_ERRORS,
)
async def upload_state(upload_id: str, owner: Caller, ctx: Context) -> dict[str, Any]:
    return await direct_upload_state(ctx, owner, upload_id)


@dataset_uploads.post(
    DIRECT_UPLOAD + "/complete",
    status_code=201,
    summary="Complete a presigned upload: check and store the dataset",
    description="Every part must be in S3 (409 names the missing ones). The file is then checked, converted and "
    "stored exactly as an uploaded one; a file that is refused is deleted from the bucket with its upload.",
    response_model=DatasetOut,
    responses=responses(
        "not-found",
        "conflict",
        "invalid-dataset",
        "validation-error",
        "payload-too-large",
        "storage-quota-exceeded",
        "storage-full",
        "service-unavailable",
    ),
)
async def complete_upload(upload_id: str, owner: Caller, ctx: Context) -> JSONResponse:
    record = await complete_direct_upload(ctx, owner, upload_id)
    return JSONResponse(record.public(), status_code=201, headers={"Location": f"/v1/datasets/{record.id}"})


@dataset_uploads.delete(DIRECT_UPLOAD, status_code=204, summary="Abort a presigned upload", responses=DIRECT_ERRORS)
async def abort_upload(upload_id: str, owner: Caller, ctx: Context) -> Response:
    await abort_direct_upload(ctx, owner, upload_id)
    return Response(status_code=204)
