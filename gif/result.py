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
    kind: str = Field(
        description="lsmr (the default) | cg | neumann, or none where nothing is solved (the first-order ablation, "
        "the training methods: no iterations, no products)."
    )
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
        None,
        description="The curvature-vector product that ran (jvp_vjp or compiled for the Gauss-Newton matrix).",
    )
    hvp_trial_seconds: dict[str, float] = Field(
        default_factory=dict, description="With hvp auto: one product of each implementation on the first batch."
    )
    hvp_cached_batches: int = 0
    batch_size: int | None = Field(
        None, description="Examples per product batch: solver.batch_size, or the batch that auto chose for the device."
    )
    hvp_seconds: float = 0.0
    hvp_compile_seconds: float = Field(
        0.0, description="Time spent compiling the product (hvp compiled, or auto's trial of it); not in hvp_seconds."
    )
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
        "not finite (the edited model's outputs overflowed). Empty for the training methods, whose scale is 1 (the "
        "trained weights) or 0 (the unedited model kept) and whose search is the result's training.",
    )


class TrainingCandidate(_Result):
    """One learning rate a training method tried."""

    learning_rate: float
    steps: int = Field(description="SGD steps run: the budget, or fewer where the loss stopped being finite.")
    checkpoints: int = Field(description="Checkpoints scored on the validation data.")
    best_step: int | None = Field(
        None, description="The step of its best checkpoint; null where no checkpoint had a finite objective."
    )
    objective: float | None = Field(
        None, description="Its best checkpoint's objective; null where no checkpoint had a finite one."
    )
    stopped: str | None = Field(None, description="Why it stopped before the budget, if it did.")


class TrainingSummary(_Result):
    """A training method's run (method fine_tune or neg_grad_plus; spec training): the learning rates tried and the
    checkpoint kept, the one with the best validation objective (the step's)."""

    learning_rate: float | None = Field(description="The chosen checkpoint's learning rate; null: the unedited model.")
    step: int = Field(description="The chosen checkpoint's step (0: the unedited model was kept).")
    objective: float | None = Field(description="The chosen checkpoint's validation objective.")
    unedited_objective: float | None = Field(description="The unedited model's, on the same validation data.")
    steps_per_candidate: int = Field(description="The budget: training.epochs passes, in steps.")
    batch_size: int
    forget_samples: int = Field(description="Removed (or relabelled) examples trained on (neg_grad_plus; 0 else).")
    retain_samples: int = Field(description="Examples descended on: the edited training data, or the retained.")
    selected_only: bool
    candidates: list[TrainingCandidate]


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


class AttackAucs(_Result):
    """A loss-threshold membership attack's AUCs on one model: P(loss on a member < loss on a held-out example),
    ties counting half; 0.5 = indistinguishable, above 0.5 = looks learned."""

    forget_vs_heldout_auc: float | None = Field(
        None,
        description="The removed training examples against held-out ones (for remove_class: unseen examples of the "
        "removed classes).",
    )
    interval: tuple[float, float] | None = Field(
        None, description="95% percentile bootstrap interval of forget_vs_heldout_auc (1000 seeded resamples)."
    )
    retain_vs_heldout_auc: float | None = Field(
        None, description="Retained training examples against held-out ones: what 'learned' looks like on this model."
    )
    retain_interval: tuple[float, float] | None = Field(
        None, description="95% percentile bootstrap interval of retain_vs_heldout_auc."
    )

    @property
    def removed(self) -> tuple[float | None, tuple[float, float] | None]:
        return self.forget_vs_heldout_auc, self.interval

    @property
    def retained(self) -> tuple[float | None, tuple[float, float] | None]:
        return self.retain_vs_heldout_auc, self.retain_interval


class LossHistogram(_Result):
    """Per-example cross-entropy losses counted on log-spaced bins (losses below the first edge in the first bin)."""

    edges: list[float] = Field(description="Bin edges (one more than bins), in loss units.")
    removed: list[int] = Field(description="The removed examples, edited model.")
    heldout: list[int] = Field(description="The held-out examples compared with them, edited model.")
    retained: list[int] = Field(description="The retained examples, edited model.")
    removed_before: list[int] = Field(description="The removed examples, original model.")


MembershipStatus = Literal["still_learned", "not_distinguishable", "over_forgotten", "not_judged"]


class Membership(AttackAucs):
    """Does the removed data still look like training data to an attacker? (``gif.membership``). The AUC fields
    are the edited model's; ``before`` holds the original's on the same examples."""

    status: MembershipStatus = Field(
        description="still_learned: the interval's lower end lies above 0.55; over_forgotten: its upper end lies "
        "below 0.45 (higher loss than unseen data marks them too); not_distinguishable otherwise; not_judged without "
        "enough held-out data."
    )
    verdict: str = Field(
        description="The plain sentence, e.g. 'removed examples remain distinguishable from unseen data: AUC 0.81 "
        "[0.77, 0.85], before the edit 0.83 (they still look learned)'; also a warning unless not_distinguishable."
    )
    before: AttackAucs | None = Field(None, description="The same attack on the original model.")
    heldout: Literal["eval", "validation"] | None = Field(
        None,
        description="The held-out examples: the eval data, else the given validation data (never a split "
        "carved from the training data, which the model has seen).",
    )
    samples: dict[str, int] = Field(
        default_factory=dict,
        description="Examples compared: removed, heldout (compared with the removed), retained, retain_heldout "
        "(each a seeded sample of at most 2000).",
    )
    histogram: LossHistogram | None = Field(None, description="The loss distributions the report plots.")


class Timings(_Result):
    selection_s: float
    solve_s: float
    step_search_s: float
    evaluation_s: float
    total_s: float
    retrain_s: float | None = None


class DataSummary(_Result):
    train_samples: int = Field(description="Examples in the training data given (a sample when train_size is set).")
    train_size: int | None = Field(None, description="The whole training set's size, when the job gave it.")
    input_transform: str | None = Field(None, description="The model's input transform that ran, step by step.")
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


class DurabilityCheck(_Result):
    name: str = Field(description="bf16, int8, or fine_tune (N steps).")
    value: float | None = Field(None, description="The forgotten quantity measured after the check.")
    recovered: float | None = Field(
        None, description="(value − after) / (before − after): the share of the edit's effect that came back."
    )
    error: str | None = Field(None, description="Why the check could not run on this model, if it could not.")


class Durability(_Result):
    """Does the edit survive a cast, int8 weights, a little more training? (gif.durability)"""

    metric: str = Field(description="The forgotten quantity re-measured (e.g. forget_test_accuracy).")
    before: float
    after: float
    checks: list[DurabilityCheck]
    holds: bool = Field(description="False when a check gives back more than a quarter of the edit's effect.")
    verdict: str = Field(description="The plain sentence; also a warning when the edit does not hold.")


class MethodComparison(_Result):
    """One method of a job that compared several (spec methods), edited on the same samples and validation data."""

    method: str
    objective: float | None = Field(
        description="Its edited model's validation objective: the automatic step's, on the step's validation data "
        "(higher is better; null where not finite). The job keeps the method with the highest."
    )
    chosen: bool = Field(description="The job's result and checkpoint are this method's.")
    metrics: dict[str, float] = Field(description="Its edited model's metrics (the result's metrics.after).")
    membership: Membership | None = Field(None, description="Its membership verdict (without the loss histogram).")
    durability: Durability | None = None
    step: StepSummary = Field(description="Its step (without the search's trace) or its training's kept checkpoint.")
    timings: Timings = Field(
        description="Its own seconds: selection, solve, step search and its evaluation (after the edit, membership, "
        "durability); total_s their sum. The shared parts (the evaluation before the edit, retraining) are the "
        "job's."
    )
    hessian_vector_products: int
    warnings: list[str] = []
    checkpoint: CheckpointInfo | None = Field(
        None, description="Its edited weights, once written: GET /v1/jobs/{id}/checkpoint?method=<method>."
    )
    program: CheckpointInfo | None = Field(
        None, description="Its edited exported program, for models uploaded as one (&format=pt2)."
    )

    def output(self, file_format: Literal["safetensors", "pt2"]) -> CheckpointInfo | None:
        return self.program if file_format == "pt2" else self.checkpoint


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
    membership: Membership | None = Field(
        None,
        description="Removals: whether the removed examples still look like training data to a loss-threshold "
        "membership attack, before and after the edit, with its verdict; null for relabel (nothing is removed) and "
        "in records of old versions.",
    )
    durability: Durability | None = Field(
        None, description="The edit re-measured after bf16, int8 weights and an optional fine-tune; null when off."
    )
    training: TrainingSummary | None = Field(
        None,
        description="The training methods (fine_tune, neg_grad_plus): the learning rates tried and the checkpoint "
        "kept; null for the influence methods.",
    )
    comparison: list[MethodComparison] | None = Field(
        None,
        description="A job of several methods (spec methods): each one, in the order asked; the result's other "
        "fields are the chosen one's. Null for a job of one method.",
    )
    chosen_by: str | None = Field(
        None, description="A job of several methods: how the result's method was chosen, in a sentence."
    )
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

    def output_of(self, method: str | None, file_format: Literal["safetensors", "pt2"]) -> CheckpointInfo | None:
        """The written file of a method the job ran (None: the chosen one, the job's own); KeyError for a method it
        did not run."""
        if method is None or (self.comparison is None and method == self.method):
            return self.output(file_format)
        entry = next((c for c in self.comparison or [] if c.method == method), None)
        if entry is None:
            raise KeyError(method)
        return entry.output(file_format)

    @property
    def outputs(self) -> list[CheckpointInfo]:
        """Every file the job wrote: its own checkpoint and program, and the compared methods'."""
        entries: list[MethodComparison | EditResult] = [self, *(self.comparison or [])]
        blobs = {blob.sha256: blob for e in entries for blob in (e.checkpoint, e.program) if blob is not None}
        return list(blobs.values())
