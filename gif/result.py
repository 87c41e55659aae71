"""The one result object of an edit: ``gif.edit.run`` builds it; the CLI, the worker, the API's job schema and
the benchmarks read it as it is. Its JSON form is the contract's ``result`` (``../shared/docs/contract.md``).

Fields that only some edits have are optional (``None`` where they do not apply); ``checkpoint`` is set
once the edited weights are written (``EditOutcome.write_checkpoint``), nowhere else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class _Result(BaseModel):
    """Unknown fields are ignored when reading: a record written by a newer worker stays readable."""


class LayerSelection(_Result):
    module: str
    units_selected: int
    units_total: int
    parameters_selected: int


class SelectionSummary(_Result):
    num_selected: int = Field(description="Parameters in the selected set J.")
    modification_ratio: float = Field(description="num_selected over the Conv/Linear parameter count.")
    criterion: str = Field(description="The selection criterion, or 'all' for methods that move every candidate.")
    layers: list[LayerSelection] = []


class SolverSummary(_Result):
    kind: str = Field(description="lsmr (the default) | cg | neumann, or none for the first-order ablation.")
    iterations: int
    hvp_count: int
    relative_residual: float
    converged: bool
    scale: float = Field(description="The Neumann series' M (1 for CG).")
    restarts: int | None = None
    lambda_max: float | None = None
    damping: float | None = None
    curvature: Literal["hessian", "gauss_newton"] | None = Field(
        None, description="The curvature solved with (solver.curvature); none for the first-order ablation."
    )
    hvp_method: str | None = Field(
        None, description="The curvature-vector product that ran (jvp_vjp for the Gauss-Newton matrix)."
    )
    hvp_trial_seconds: dict[str, float] = Field(
        default_factory=dict, description="With hvp auto: one product of each implementation on the first batch."
    )
    hvp_cached_batches: int = 0
    hvp_seconds: float = 0.0
    residual_history: list[float] = []


class StepSummary(_Result):
    mode: Literal["auto", "fixed"]
    scale: float
    objective: float | None = None
    relative_change: float | None = None
    evaluations: int | None = None
    validation: Literal["provided", "carved"] | None = None
    validation_samples: dict[str, int] | None = None
    trace: list[tuple[float, float | None]] = Field(
        default_factory=list,
        description="auto: every (scale, objective) the search evaluated, in order; null where the objective was "
        "not finite (the edited model's outputs overflowed).",
    )


class Metrics(_Result):
    before: dict[str, float]
    after: dict[str, float]
    retrained: dict[str, float] | None = None


class ClassAccuracy(_Result):
    """Accuracy per true class (keys: class indices) of the models ``Metrics`` compares."""

    data: Literal["eval", "retain"] = Field(
        description="eval: the held-out eval data; retain: the sample of retained training examples (no eval data)."
    )
    before: dict[str, float]
    after: dict[str, float]
    retrained: dict[str, float] | None = None


class Timings(_Result):
    selection_s: float
    solve_s: float
    step_search_s: float
    evaluation_s: float
    total_s: float
    retrain_s: float | None = None


class DataSummary(_Result):
    train_samples: int
    affected_samples: int
    hessian_samples: int
    gradient_samples: int
    coefficient: float
    device: str


class DeviceReport(_Result):
    type: str = Field(description="cpu or cuda.")
    index: int | None = None
    name: str = Field(description="The GPU model, or the CPU's.")
    total_memory_bytes: int | None = None
    peak_memory_bytes: int = Field(
        description="CUDA: the allocator's peak during the edit; CPU: the job process's peak resident set."
    )


class CheckpointInfo(_Result):
    sha256: str = Field(description="Also the ETag of GET /v1/jobs/{id}/checkpoint.")
    size_bytes: int


class EditResult(_Result):
    method: str
    request: str
    selection: SelectionSummary
    solver: SolverSummary
    step: StepSummary
    metrics: Metrics
    class_accuracy: ClassAccuracy | None = Field(None, description="Per-class accuracy before, after and retrained.")
    timings: Timings
    data: DataSummary | None = Field(
        None, description="Sample sizes of the edit (absent from records of old versions)."
    )
    device: DeviceReport | None = Field(None, description="Where the edit ran (absent from records of old versions).")
    warnings: list[str] = []
    checkpoint: CheckpointInfo | None = Field(None, description="The edited weights, once written.")
    model_id: str | None = Field(
        None, description="HTTP: the edited checkpoint registered as a model, to be the model_id of a next edit."
    )
    program: CheckpointInfo | None = Field(
        None,
        description="The edited exported program (.pt2), for models uploaded as one: "
        "GET /v1/jobs/{id}/checkpoint?format=pt2.",
    )

    def output(self, file_format: Literal["safetensors", "pt2"]) -> CheckpointInfo | None:
        """The written file of a format: the edited weights (safetensors), or the edited exported program (pt2)."""
        return self.program if file_format == "pt2" else self.checkpoint
