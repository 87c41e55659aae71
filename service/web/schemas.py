"""The HTTP API's request and response bodies (the job specification itself is ``gif.spec.JobSpec``)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from gif.models.registry import ArchitectureSpec
from gif.spec import JobSpec
from service.core.catalog import DatasetBase, ModelBase
from service.core.jobs import JobBase

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


# The upload resources: their base's fields (a stored record is served as its base). No docstrings: they would
# become the schemas' descriptions.
class ModelOut(ModelBase):
    architecture: ArchitectureSpec  # type: ignore[assignment]  # stored as the JSON of the spec it was checked as


class DatasetOut(DatasetBase):
    pass


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


# The job resource: ``JobBase``'s fields (a ``JobRecord`` is served as one), three of them typed here for the schema.
# No docstring: it would become the schema's description.
class JobOut(JobBase):
    spec: JobSpec  # type: ignore[assignment]  # stored as the JSON of the JobSpec it was checked as
    progress: Progress | None = Field(  # type: ignore[assignment]  # the worker's progress writes
        None, description="Updated while the job runs; the last value is kept."
    )
    error: JobError | None = Field(None, description="Once failed or cancelled.")  # type: ignore[assignment]
