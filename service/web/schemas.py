"""The HTTP API's request and response bodies (the job specification itself is ``gif.spec.JobSpec``)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from gif.models.registry import ArchitectureSpec
from gif.result import EditResult
from gif.spec import JobSpec
from service.core.catalog import UploadRecord
from service.core.jobs import JobRecord, JobStatus

Item = TypeVar("Item")


class JobRequest(JobSpec):
    """The job specification as the HTTP API takes it: the model and training data are required."""

    model_id: str = Field(description="An uploaded model (POST /v1/models).", examples=["model_0123456789abcdef0123"])
    train_dataset_id: str = Field(
        description="The data the model was trained on (POST /v1/datasets); request indices refer to it.",
        examples=["dataset_0123456789abcdef0123"],
    )


_IDS = {"model_id": "model_0123456789abcdef0123", "train_dataset_id": "dataset_0123456789abcdef0123"}
JOB_EXAMPLES = {
    "remove_class": {
        "summary": "Forget a class",
        "description": "Forget every training example of class 8. Replace the ids with your uploads' ids.",
        "value": {
            **_IDS,
            "eval_dataset_id": "dataset_00000000000000000000",
            "request": {"kind": "remove_class", "classes": [8]},
            "method": "gif",
            "selection": {"criterion": "topk_outputs", "ratio": 0.1},
            "solver": {"kind": "lsmr", "tolerance": 0.02, "max_iterations": 50},
        },
    },
    "remove_samples": {
        "summary": "Forget some training examples",
        "description": "Forget three training examples (indices into the training data), with a fixed step.",
        "value": {
            **_IDS,
            "request": {"kind": "remove_samples", "indices": [12, 40, 97]},
            "solver": {"kind": "lsmr", "max_iterations": 50, "damping": 0.001},
            "step": {"mode": "fixed", "scale": 1.0},
        },
    },
    "relabel": {
        "summary": "Repair labels (backdoor or mislabels)",
        "description": "Give two training examples new labels; the auto step targets their new labels.",
        "value": {
            **_IDS,
            "request": {"kind": "relabel", "indices": [3, 17], "labels": [1, 7]},
            "selection": {"criterion": "topk_gradients", "ratio": 0.1},
        },
    },
}


class QuotaState(BaseModel):
    name: Literal["active_jobs", "stored_bytes", "submits_per_minute", "requests_per_second"]
    limit: int
    usage: float = Field(description="Jobs queued or running, bytes stored, or the bucket's tokens spent.")


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str = Field(examples=["urn:gif:problem:invalid-weights"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        None, description="Field-level problems: {detail, pointer (JSON pointer into the body or form) | parameter}."
    )
    quota: QuotaState | None = Field(None, description="Past a per-key limit: which one, its value, the key's usage.")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null on the last page.")


class ArchitectureInfo(BaseModel):
    name: str
    family: str = Field(description="paper (the paper's four architectures), torchvision or timm.")
    description: str
    config_schema: dict[str, Any]


class ParameterInfo(BaseModel):
    name: str
    shape: list[int]


class ParameterListing(BaseModel):
    parameters: list[ParameterInfo] = Field(description="In forward order (the order of model.parameters()).")
    num_parameters: int


class ModelOut(BaseModel):
    id: str
    architecture: ArchitectureSpec
    num_parameters: int
    sha256: str
    size_bytes: int
    format: Literal["safetensors", "torch_zip", "pt2"]
    input_shape: list[int] | None = Field(
        None, description="Exported programs: the shape of one sample the program takes (the batch left out)."
    )
    parent_model_id: str | None = Field(None, description="An edited model: the model the job edited.")
    job_id: str | None = Field(None, description="An edited model: the job that made it (result.model_id).")
    filename: str | None = None
    created_at: str


class DatasetOut(BaseModel):
    id: str
    num_samples: int
    num_classes: int = Field(description="The largest label + 1.")
    sample_shape: list[int]
    class_counts: list[int] = Field(description="Examples per label, from label 0.")
    sha256: str
    size_bytes: int
    format: Literal["safetensors", "npz"]
    filename: str | None = None
    created_at: str


class Progress(BaseModel):
    phase: str = Field(description="starting, selection, solve, step_search, evaluation, retrain")
    fraction: float = Field(ge=0.0, le=1.0)
    iteration: int | None = None
    relative_residual: float | None = None


class JobError(BaseModel):
    type: str
    code: str
    title: str
    detail: str
    problems: list[str] = []
    retryable: bool = Field(False, description="True when submitting the same job again may succeed.")


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    spec: JobSpec
    progress: Progress | None = Field(None, description="Updated while the job runs; the last value is kept.")
    result: EditResult | None = Field(None, description="Once succeeded.")
    error: JobError | None = Field(None, description="Once failed or cancelled.")
    cancel_requested: bool = Field(False, description="A cancel was asked for and the worker has not stopped yet.")
    attempts: int = Field(
        0,
        description="Times a worker took the job; a job whose process died is queued again, up to "
        "GIF_JOB_MAX_ATTEMPTS attempts.",
    )
    warnings: list[str] | None = Field(
        None,
        description="Why the job may wait or ran again: no healthy worker when it was submitted, an attempt "
        "whose process died. The edit's own warnings are in result.warnings.",
    )


def public(record: UploadRecord, model: type[BaseModel]) -> dict[str, Any]:
    """A stored upload record without its internal fields (owner, sequence number)."""
    return record.model_dump(mode="json", include=set(model.model_fields))


def public_job(record: JobRecord) -> dict[str, Any]:
    """The job resource (``JobOut``'s fields: ``JobRecord.public``)."""
    return record.public()
