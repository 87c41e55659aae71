"""Uploaded models and datasets: POST (multipart, streamed), list, GET and DELETE; the same shape for both.

No ``from __future__ import annotations`` here: the routes are built per kind inside ``catalog_router``, and
FastAPI must see their annotations (which name that kind's dependency) evaluated, not as strings.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.core.catalog import Kind, UploadRecord
from service.core.context import ServiceContext
from service.web.auth import Caller
from service.web.dependencies import Context, Pagination, owned_item
from service.web.operations import upload_dataset, upload_model
from service.web.problems import responses
from service.web.schemas import DatasetOut, ModelOut, Page

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
datasets = catalog_router(
    "dataset",
    DatasetOut,
    upload_dataset,
    multipart(
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
    ),
    UPLOAD_ERRORS[:1] + ("invalid-dataset",) + UPLOAD_ERRORS[2:],
)
