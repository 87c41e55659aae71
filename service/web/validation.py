"""Checks of uploads and jobs, from the engine's own definitions (registry, file readers, request rules).

This is why the API process imports torch: models are built on the ``meta`` device (shapes only,
no memory, no CUDA) to check uploaded weights and sample shapes, and datasets are read once at
upload to record what later job checks need. Nothing here runs an edit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gif.checks import JobPart, job_fit_problems
from gif.errors import InvalidSpecError, InvalidWeightsError, UnknownArchitectureError
from gif.io.datasets import DatasetSummary, summarize_dataset
from gif.io.files import sha256_file, sniff_format
from gif.io.images import ImageLimits, convert_images
from gif.io.programs import inspect_program_file
from gif.models.checkpoints import check_weights, checkpoint_tensor_infos
from gif.models.registry import EXPORTED, ArchitectureSpec, build_model, is_exported, num_classes, resolve
from gif.models.transforms import InputTransform
from gif.spec import JobSpec
from service.core.catalog import DatasetRecord, ModelRecord
from service.core.errors import ServiceError

DATA_INPUTS: dict[JobPart, str] = {
    "train": "train_dataset_id",
    "eval": "eval_dataset_id",
    "validation": "validation_dataset_id",
    "attack": "attack_dataset_id",
}
POINTERS: dict[JobPart, str] = {
    "request": "/request",
    "train_size": "/train_size",
    **{part: f"/{field}" for part, field in DATA_INPUTS.items()},
}


def inspect_model(path: Path, architecture: ArchitectureSpec, max_bytes: int) -> dict[str, Any]:
    """Check a model file: weights against their architecture, or an exported program with the validating loader."""
    if is_exported(architecture):
        return inspect_program(path, max_bytes)
    return inspect_weights(path, architecture, max_bytes)


def inspect_program(path: Path, max_bytes: int) -> dict[str, Any]:
    """Check a ``.pt2`` program with the validating loader (nothing from it runs, its weights are not held)."""
    facts = inspect_program_file(path, max_bytes)
    return {"architecture": {"name": EXPORTED, "config": {}}, **asdict(facts), "format": "pt2"}


def inspect_weights(path: Path, architecture: ArchitectureSpec, max_bytes: int) -> dict[str, Any]:
    """Check a checkpoint against its architecture (every problem at once); its facts for the record.

    Safetensors files are scanned in bounded chunks, so the memory used does not grow with the file.
    """
    tensors = checkpoint_tensor_infos(path, max_bytes)
    model = build_model(architecture, device="meta")
    problems = check_weights(model, tensors)
    if problems:
        raise InvalidWeightsError("the weights do not match the architecture", problems)
    return {
        "architecture": architecture.model_dump(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_classes": num_classes(architecture),
        "format": sniff_format(path),
    }


def inspect_dataset(path: Path, max_bytes: int) -> dict[str, Any]:
    """Check a dataset (shapes, dtypes, labels, NaN/Inf) without holding its images; its facts for the record."""
    return {**asdict(summarize_dataset(path, max_bytes)), "format": sniff_format(path)}


def convert_image_dataset(
    path: Path, converted: Path, classes: list[str] | None, limits: ImageLimits
) -> dict[str, Any]:
    """Decode an image archive into ``converted`` (uint8 tensors, in bounded memory); the stored file's facts."""
    source = convert_images(path, converted, classes, limits).source
    return {
        **inspect_dataset(converted, limits.max_bytes),
        "source": source,
        "sha256": sha256_file(converted),
        "size_bytes": converted.stat().st_size,
    }


def parse_input_transform(raw: str | None) -> InputTransform | None:
    """The ``input`` form field of a model upload: its preprocessing as JSON, or absent."""
    if raw is None:
        return None
    try:
        return InputTransform.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"pointer": "/input" + "".join(f"/{part}" for part in error["loc"]), "detail": error["msg"]}
            for error in exc.errors()
        ]
        raise ServiceError("validation-error", "the input transform is invalid", errors) from None


class DatasetReference(BaseModel):
    """``POST /v1/datasets`` as JSON: an object of the S3 store's bucket (or others the operator allowed) by URL."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048,
        description="s3://bucket/key of a dataset file (tensors or an image archive), or s3://bucket/prefix/ of "
        "WebDataset .tar shards; inside GIF_DATA_URL_ALLOWED.",
        examples=["s3://datasets/imagenet-sample/train.zip"],
    )
    classes: list[str] | None = Field(None, description="Image archives only: the class names in label order.")


def parse_dataset_reference(raw: bytes) -> DatasetReference:
    """The JSON body of a dataset registered by URL; its classes checked as the form field's are."""
    try:
        reference = DatasetReference.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"pointer": "".join(f"/{part}" for part in error["loc"]) or "/", "detail": error["msg"]}
            for error in exc.errors()
        ]
        raise ServiceError("validation-error", "the dataset reference is invalid", errors) from None
    if reference.classes is not None:
        parse_classes(json.dumps(reference.classes))
    return reference


def parse_classes(raw: str | None) -> list[str] | None:
    """The ``classes`` form field: a JSON list of distinct names, or absent."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        value = exc
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        detail = 'a JSON list of class names, e.g. ["cat", "dog"]'
        raise ServiceError("validation-error", "the classes are invalid", [{"pointer": "/classes", "detail": detail}])
    if len(set(value)) != len(value):
        raise ServiceError(
            "validation-error", "the classes are invalid", [{"pointer": "/classes", "detail": "names must not repeat"}]
        )
    return value


@lru_cache(maxsize=256)
def _logits_shape(architecture_json: str, sample_shape: tuple[int, ...]) -> tuple[int, ...] | str:
    """The model's output shape for one sample, or why it cannot take such a sample (meta device: no compute)."""
    model = build_model(json.loads(architecture_json), device="meta")
    try:
        with torch.no_grad():
            return tuple(model.eval()(torch.empty(1, *sample_shape, device="meta")).shape)
    except (RuntimeError, ValueError, IndexError) as exc:
        return str(exc).splitlines()[0]


def warm_up() -> None:
    """Run the meta-device check once: its first use in a process costs about a second (lazy torch imports)."""
    _logits_shape(json.dumps({"name": "mlp", "config": {"sizes": [4, 2]}}), (4,))


def dataset_summary(record: DatasetRecord) -> DatasetSummary:
    """What job checks need of a dataset (``gif.checks``), from its record: the summary it was measured as at upload."""
    return DatasetSummary(**{field.name: getattr(record, field.name) for field in fields(DatasetSummary)})


def model_input_shape(model: ModelRecord, sample_shape: list[int]) -> list[int]:
    """The shape the model is fed for a stored sample of ``sample_shape``: after its input transform, if it has one."""
    if model.input_transform is None:
        return sample_shape
    return InputTransform.model_validate(model.input_transform).output_shape(sample_shape)


def check_job(spec: JobSpec, model: ModelRecord, datasets: dict[JobPart, DatasetRecord]) -> None:
    """Refuse a job that cannot run on its model and data (``gif.checks``), every problem at its field's pointer."""
    summaries = {part: dataset_summary(record) for part, record in datasets.items()}
    errors: list[dict[str, str]] = []
    try:
        sample_shape = tuple(model_input_shape(model, summaries["train"].sample_shape))
    except ValueError as exc:
        detail = f"the model's input transform cannot take the training samples: {exc}"
        raise ServiceError(
            InvalidSpecError.code,
            "the job does not fit its model and data",
            [{"pointer": "/train_dataset_id", "detail": detail}],
        ) from None
    if is_exported(model.architecture):
        takes = tuple(model.input_shape or ())
        output_shape: tuple[int, ...] | str = (
            (1, model.num_classes)
            if sample_shape == takes
            else f"the exported program takes samples of shape {list(takes)}"
        )
        if spec.retrain is not None:
            errors.append({"pointer": "/retrain", "detail": "an exported program cannot be retrained from scratch"})
    else:
        output_shape = _logits_shape(json.dumps(model.architecture, sort_keys=True), sample_shape)
    errors += [
        {"pointer": POINTERS[p.part], "detail": p.detail} for p in job_fit_problems(spec, output_shape, summaries)
    ]
    if errors:
        raise ServiceError(InvalidSpecError.code, "the job does not fit its model and data", errors)


def parse_architecture(raw: str | dict[str, Any], pointer: str) -> ArchitectureSpec:
    """An architecture from JSON text or a dict, checked against the registry, its config's defaults filled in."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise ServiceError(
            "validation-error",
            "the architecture is not valid JSON",
            [{"pointer": pointer, "detail": f"{exc.msg} at position {exc.pos}"}],
        ) from None
    if is_exported(value if isinstance(value, dict) else None):
        if value.get("config"):
            raise ServiceError(
                "validation-error",
                "an exported program takes no config",
                [{"pointer": f"{pointer}/config", "detail": "must be empty"}],
            )
        return ArchitectureSpec(name=EXPORTED)
    try:
        entry, config = resolve(value)
    except UnknownArchitectureError as exc:
        raise ServiceError.from_engine(exc, pointer) from None
    return ArchitectureSpec(name=entry.name, config=config.model_dump())
