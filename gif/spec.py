"""The one job specification, shared by the command line, the HTTP API and the worker.

Sign convention (see ``gif.influence``): the solved vector Δ is the *change of weights that
removes or relabels the data*; a fixed step applies exactly θ_J ← θ_J + scale·Δ_J.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field, PositiveInt, model_validator

SampleCount = PositiveInt | Literal["all"]


class _Strict(BaseModel):
    """Unknown fields are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


def _unique(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError("values must not repeat")
    return values


def _unique_as_text(values: list[str | int]) -> list[str | int]:
    if len({str(v) for v in values}) != len(values):
        raise ValueError('ids must not repeat (7 and "7" name one example)')
    return values


NonNegative = Annotated[int, Field(ge=0)]
UniqueIndices = Annotated[list[NonNegative], Field(min_length=1), AfterValidator(_unique)]
UniqueIds = Annotated[list[str | int], Field(min_length=1), AfterValidator(_unique_as_text)]


class _Examples(_Strict):
    """Training examples named by their positions (``indices``) or by the ids the training data carries (``ids``)."""

    indices: UniqueIndices | None = Field(None, description="Positions in the training data (give these or ids).")
    ids: UniqueIds | None = Field(
        None,
        description="The examples' own ids, when the training dataset carries them (has_ids): e.g. an image "
        "archive's member paths. Give these or indices.",
    )

    @model_validator(mode="after")
    def _named_once(self) -> _Examples:
        if (self.indices is None) == (self.ids is None):
            raise ValueError("name the examples by indices or by ids (exactly one of them)")
        return self

    @property
    def count(self) -> int:
        return len(self.indices if self.indices is not None else self.ids or [])


class RemoveClass(_Strict):
    """Forget every training example of these classes."""

    kind: Literal["remove_class"] = "remove_class"
    classes: UniqueIndices = Field(examples=[[8]])


class RemoveSamples(_Examples):
    """Forget these training examples (by index into the training data, or by id)."""

    kind: Literal["remove_samples"] = "remove_samples"
    indices: UniqueIndices | None = Field(
        None, examples=[[12, 40, 97]], description="Positions in the training data (give these or ids)."
    )


class Relabel(_Examples):
    """Replace the labels of these training examples (backdoor or mislabel repair), named by index or by id."""

    kind: Literal["relabel"] = "relabel"
    indices: UniqueIndices | None = Field(
        None, examples=[[3, 17]], description="Positions in the training data (give these or ids)."
    )
    labels: list[NonNegative] = Field(min_length=1, examples=[[1, 7]])
    attack_target: NonNegative | None = Field(
        None,
        description="The backdoor's target class, for heldout_attack_success_rate; null: the most common old "
        "label among the relabelled examples whose label changes.",
    )

    @model_validator(mode="after")
    def _same_length(self) -> Relabel:
        if self.count != len(self.labels):
            named = "indices" if self.indices is not None else "ids"
            raise ValueError(f"{named} and labels must have the same length ({self.count} != {len(self.labels)})")
        return self


EditRequest = Annotated[RemoveClass | RemoveSamples | Relabel, Field(discriminator="kind")]

Method = Literal["gif", "fif", "pif", "if", "first_order", "fine_tune", "neg_grad_plus"]
TRAINING_METHODS = ("fine_tune", "neg_grad_plus")  # methods that train (gif.training_methods), not solve
Criterion = Literal["topk_outputs", "topk_gradients", "threshold", "random"]


class SelectionSpec(_Strict):
    """Which output units (a Linear row or a Conv output channel, with fan-in and bias) may move."""

    criterion: Criterion = Field(
        "topk_outputs",
        description="How units are ranked. Left out, a relabel selects by output gradients (topk_gradients): the units "
        "that carry a backdoor are the ones its relabel loss moves, not the most active ones (bench/RESULTS.md "
        "section 15); every other request by outputs.",
    )
    ratio: float = Field(0.1, gt=0.0, le=1.0, description="Fraction of each Conv/Linear layer's parameters to select.")
    seed: int = 0
    threshold: float | None = Field(
        None,
        ge=0.0,
        description="For criterion 'threshold': units whose |mean output| exceeds it are candidates. "
        "Null means each layer's mean unit score.",
    )


class SolverSpec(_Strict):
    """How the least-squares system min ‖H_S x − g‖ (normal equations H_Sᵀ H_S x = H_Sᵀ g) is solved, and on which data.

    The defaults follow measurements on an H100 (5 seeds: converged solves beat the first-order ablation
    on four tasks where 5 CG iterations did not) and bench/RESULTS.md section 8 (LSMR reaches the relative
    residual 0.02 in fewer products than CG). The solve stops on ``tolerance``; ``max_iterations`` only bounds
    its cost. The result always reports the residual reached.
    """

    kind: Literal["lsmr", "cg", "neumann"] = Field(
        "lsmr", description="lsmr (LSMR on H_S: monotone residual), cg (CG on the normal equations) or neumann."
    )
    max_iterations: int = Field(50, ge=1, le=100_000, description="A cap on the cost: two HVPs per iteration.")
    tolerance: float = Field(
        0.02, gt=0.0, lt=1.0, description="Relative residual ‖Aᵀ(Ax − b)‖ / ‖Aᵀb‖ at which to stop."
    )
    damping: float = Field(
        0.01, ge=0.0, description="λ added to the Hessian (H + λI), e.g. the training's weight decay."
    )
    hessian_samples: SampleCount = Field(512, description="Retained training examples in the fixed Hessian sample.")
    gradient_samples: SampleCount = Field(256, description="Affected examples in the gradient (and selection) sample.")
    seed: int = 0
    batch_size: Annotated[int, Field(gt=0, le=65536)] | Literal["auto"] = Field(
        256,
        description="Examples per batch of the curvature products and the gradient; auto: the largest batch whose "
        "first-order graph fits the device's cache budget (half its free memory), capped by the sample (the result's "
        "solver.batch_size says which).",
    )
    hvp: Literal["auto", "forward_over_reverse", "double_backward", "cached_double_backward", "compiled"] = Field(
        "auto",
        description="Hessian-vector product implementation; auto times each on the first batch and keeps the "
        "fastest (the result's solver.hvp_method and hvp_trial_seconds say which and why), trying compiled "
        "(torch.compile of the product) only where the solve's expected products repay its compile time. Where "
        "compiling fails the fastest eager product runs and a warning says why.",
    )
    neumann_scale: float | None = Field(
        None, gt=0.0, description="Neumann's M (series on AᵀA/M²). Null: set from a power-iteration estimate."
    )
    curvature: Literal["hessian", "gauss_newton"] = Field(
        "hessian",
        description="The curvature H of the system: the Hessian of the training loss, or its generalised "
        "Gauss-Newton matrix Jᵀ H_out J (positive semi-definite; one product is a forward pass with forward-mode "
        "AD and one backward pass; hvp auto or compiled).",
    )

    @model_validator(mode="after")
    def _gauss_newton_has_two_products(self) -> SolverSpec:
        if self.curvature == "gauss_newton" and self.hvp not in ("auto", "compiled"):
            raise ValueError(
                "solver.hvp chooses a Hessian-vector product: with curvature gauss_newton, leave it auto or compiled"
            )
        return self


class AutoStep(_Strict):
    """Line-search the step on a validation split carved from the training data (never the eval data)."""

    mode: Literal["auto"] = "auto"
    validation_fraction: float = Field(0.1, gt=0.0, le=0.5)
    max_validation_samples: PositiveInt = 2000
    max_retain_accuracy_drop: float = Field(
        0.01, ge=0.0, le=1.0, description="remove_samples: the validation accuracy the step may cost at most."
    )
    target_loss: float | None = Field(
        None,
        ge=0.0,
        description="remove_samples: the mean loss the removed examples should reach. Null: the validation "
        "examples' loss (meaningful when the validation data is unseen by the model).",
    )
    plateau_tolerance: float | None = Field(
        0.005,
        ge=0.0,
        le=1.0,
        description="remove_class: the smallest step with the best validation score leaves unseen examples of the "
        "class just across the boundary, so the step moves into the plateau: to the geometric middle between it "
        "and the largest step whose score is within this tolerance of the best, where the score is within it too. "
        "Null: the smallest step with the best score.",
    )


class FixedStep(_Strict):
    """Apply θ_J ← θ_J + scale·Δ_J exactly."""

    mode: Literal["fixed"] = "fixed"
    scale: float = Field(allow_inf_nan=False, examples=[95.0])


Step = Annotated[AutoStep | FixedStep, Field(discriminator="mode")]


def _unique_rates(values: list[float]) -> list[float]:
    if len(set(values)) != len(values):
        raise ValueError("learning rates must not repeat")
    return values


LearningRates = Annotated[
    list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]],
    Field(min_length=1, max_length=16),
    AfterValidator(_unique_rates),
]


class TrainingMethodSpec(_Strict):
    """The budget of the training methods (method fine_tune or neg_grad_plus; gif.training_methods): SGD from the
    trained model, once per candidate learning rate, each run scored at checkpoints by the objective the automatic
    step maximises on the same validation data; the best checkpoint of all is kept, the unedited model included.

    fine_tune descends on the edited training data (the retained examples; for a relabel, the relabelled ones with
    their new labels too). neg_grad_plus ascends on the removed examples (for a relabel: ascends on the old labels,
    descends on the new) and, in the same step, descends on a batch of retained examples, weighted
    retain_weight against 1 − retain_weight."""

    epochs: PositiveInt = Field(
        3,
        le=1000,
        description="The budget per learning rate, in passes: fine_tune over the edited training data, neg_grad_plus "
        "over the removed (or relabelled) examples it ascends on.",
    )
    batch_size: PositiveInt = Field(64, le=65536, description="Examples per step (on each side for neg_grad_plus).")
    learning_rates: LearningRates = Field(
        [0.001, 0.01, 0.1],
        examples=[[0.001, 0.01, 0.1]],
        description="The candidates searched: each costs the whole budget; the checkpoint with the best validation "
        "objective over all of them is kept.",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    retain_weight: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="neg_grad_plus: the loss is retain_weight × (retained examples' loss) − (1 − retain_weight) × "
        "(removed examples' loss); 0 is plain gradient ascent. Unused by fine_tune.",
    )
    checks_per_epoch: PositiveInt = Field(
        4,
        le=1000,
        description="Checkpoints scored per pass, besides those after steps 1, 2, 4, 8, … and the last one (an "
        "ascent can overshoot within a pass, so the early checks come close together).",
    )
    selected_only: bool = Field(
        False,
        description="Train only the parameters the job's selection picks (as GIF edits them; normalisation "
        "statistics and dropout frozen); false: every parameter, in training mode.",
    )
    seed: int = Field(0, description="Seeds the order of the batches.")


class RetrainSpec(_Strict):
    """Ground truth: train the same architecture from scratch on the retained (or relabelled) data."""

    epochs: PositiveInt = Field(15, le=1000)
    batch_size: PositiveInt = Field(128, le=65536)
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    seed: int = 0


class EvaluationSpec(_Strict):
    """How much data the reported metrics use."""

    retain_samples: SampleCount = Field(5000, description="Retained training examples for retain_accuracy and MIA.")
    batch_size: PositiveInt = Field(512, le=65536)


class DurabilitySpec(_Strict):
    """Whether the edit survives what happens to models next: each check re-measures the forgotten quantity (result
    durability; gif.durability)."""

    bf16: bool = Field(True, description="After casting the weights and inputs to bfloat16 (one evaluation).")
    int8: bool = Field(
        True, description="With int8 Linear and Conv weights, symmetric, per output unit (one evaluation)."
    )
    fine_tune_steps: int = Field(
        0,
        ge=0,
        le=100_000,
        description="After this many SGD steps (batch 64, momentum 0.9) on the retained training examples only, a "
        "relearning probe; 0: not checked (it costs about as many training steps).",
    )
    fine_tune_lr: float | None = Field(
        None, gt=0.0, description="The fine-tune's learning rate; null: retrain.lr when given, else 0.01."
    )


class Notify(_Strict):
    """Where the service POSTs the job resource when the job ends (signed: Standard Webhooks)."""

    url: AnyHttpUrl = Field(examples=["https://example.org/hooks/gif"])


class JobSpec(_Strict):
    """One edit: what to forget or relabel, with which method, selection, solver and step."""

    model_id: str | None = Field(None, description="HTTP only: an uploaded model.")
    train_dataset_id: str | None = Field(None, description="HTTP only: the data the model was trained on.")
    eval_dataset_id: str | None = Field(
        None, description="HTTP only, optional: held-out data for the reported metrics."
    )
    validation_dataset_id: str | None = Field(
        None,
        description="HTTP only, optional: held-out data (not the eval data) for the automatic step search. "
        "Null: a split carved from the training data.",
    )
    attack_dataset_id: str | None = Field(
        None,
        description="HTTP only, optional, relabel only: held-out inputs carrying the trigger, labelled with their "
        "true labels, for heldout_attack_success_rate.",
    )
    notify: Notify | None = Field(
        None, description="HTTP only, optional: a URL that receives the job resource when the job ends."
    )
    request: EditRequest
    train_size: PositiveInt | None = Field(
        None,
        description="The number of examples the model was trained on, when the training dataset is a sample of them "
        "(it must hold every example to remove or relabel, and the Hessian is estimated on its retained examples): "
        "the coefficient c of the edit (removed / retained) is computed from it. Null: the training dataset is the "
        "whole training set.",
    )
    method: Method = Field(
        "gif",
        description="An influence method (gif, fif, pif, if, first_order: a solve and a step) or a training method "
        "(fine_tune, neg_grad_plus: training with the budget in training, its learning rate searched).",
    )
    methods: list[Method] | None = Field(
        None,
        min_length=2,
        max_length=7,
        examples=[["gif", "first_order", "fine_tune", "neg_grad_plus"]],
        description="Several methods compared in one job, on the same samples and validation data: each edits the "
        "model, is evaluated (metrics, membership, durability, cost) and scored by the automatic step's validation "
        "objective (never the eval data); the best is the job's result and checkpoint, result.comparison reports "
        "every one, and each one's checkpoint is kept (GET /v1/jobs/{id}/checkpoint?method=). method must be left "
        "at its default (gif) or be one of them; the step must be auto. Null: method alone.",
    )
    selection: SelectionSpec = SelectionSpec()
    solver: SolverSpec = SolverSpec()
    step: Step = AutoStep()
    training: TrainingMethodSpec = Field(
        TrainingMethodSpec(), description="The budget of the training methods (fine_tune, neg_grad_plus)."
    )
    retrain: RetrainSpec | None = None
    evaluation: EvaluationSpec = EvaluationSpec()
    durability: DurabilitySpec = DurabilitySpec()

    @model_validator(mode="after")
    def _relabel_selects_by_output_gradients(self) -> JobSpec:
        if isinstance(self.request, Relabel) and "criterion" not in self.selection.model_fields_set:
            self.selection = self.selection.model_copy(update={"criterion": "topk_gradients"})
        return self

    @model_validator(mode="after")
    def _training_methods_search_their_learning_rate(self) -> JobSpec:
        if self.method in TRAINING_METHODS and isinstance(self.step, FixedStep):
            raise ValueError(
                f"method {self.method} keeps its best checkpoint by the automatic step's validation objective: "
                "leave step auto (give one learning rate in training.learning_rates to fix it)"
            )
        return self

    @model_validator(mode="after")
    def _methods_are_compared_on_the_validation_objective(self) -> JobSpec:
        if self.methods is None:
            return self
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods must not repeat")
        if self.method != "gif" and self.method not in self.methods:  # a stored spec holds the default: no refusal
            raise ValueError(f"method {self.method} is not one of methods {self.methods}: leave method out, or list it")
        if isinstance(self.step, FixedStep):
            raise ValueError(
                "methods are compared by the automatic step's validation objective: leave step auto to compare them"
            )
        return self

    @property
    def compared(self) -> list[Method]:
        """The methods the job runs: ``methods``, or ``method`` alone."""
        return list(self.methods) if self.methods is not None else [self.method]


def check_request(
    request: RemoveClass | RemoveSamples | Relabel, class_counts: list[int], num_classes: int, has_ids: bool = False
) -> None:
    """Check a request against the training data's label counts, ids (whether it has them) and the model's classes.

    Needs only metadata, so the HTTP API can refuse a bad job at POST time without loading tensors.
    Raises ``InvalidSpecError`` listing every problem.
    """
    from gif.errors import InvalidSpecError

    num_samples = sum(class_counts)
    problems = []
    if len(class_counts) > num_classes:
        problems.append(f"the training data has label {len(class_counts) - 1} but the model has {num_classes} classes")
    if isinstance(request, RemoveClass):
        for c in request.classes:
            if c >= num_classes:
                problems.append(f"class {c} is out of range (the model has {num_classes} classes)")
            elif c >= len(class_counts) or class_counts[c] == 0:
                problems.append(f"class {c} has no training examples: nothing to forget")
        if not problems and sum(class_counts[c] for c in request.classes) == num_samples:
            problems.append("removing these classes would remove every training example")
    else:
        bad = [i for i in request.indices or [] if i >= num_samples]
        if bad:
            problems.append(f"indices out of range for {num_samples} training examples: {bad[:10]}")
        if request.ids is not None and not has_ids:
            problems.append("the training data carries no ids: name the examples by their indices")
        if isinstance(request, RemoveSamples) and request.count >= num_samples:
            problems.append("removing these samples would remove every training example")
    if isinstance(request, Relabel):
        bad_labels = [label for label in request.labels if label >= num_classes]
        if bad_labels:
            problems.append(f"labels out of range for {num_classes} classes: {bad_labels[:10]}")
    if problems:
        raise InvalidSpecError("the request does not fit the model and data", problems)
