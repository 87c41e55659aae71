"""Choosing the step s in θ_J ← θ_J + s·Δ_J on validation data (method.md §4).

The paper hand-picked s on test data; we search it on validation data only. Candidates are
spaced by the relative weight change they cause, r = ‖s·Δ_J‖ / ‖θ_J‖, on a log grid from 1e-4
to 1, then refined by golden-section search around the best grid point; s = 0 (no edit) is
always a candidate. The objective depends on the request (higher is better):

- ``remove_class``: the paper's score (eq. 32) from the accuracy on validation examples of the
  kept classes and on validation examples of the removed classes.
- ``relabel``: the harmonic mean of the affected examples' accuracy under their new labels and
  the accuracy on the other validation examples.
- ``remove_samples``: −|mean loss of the removed examples − target|, where the target is the mean
  loss of unseen data (the validation examples, unless a target is given); steps that cost more
  than ``max_retain_accuracy_drop`` of validation accuracy are refused. A retrained model still
  classifies most removed samples correctly, so driving their accuracy to zero is over-forgetting.

The policy of a job is ``step_policy(...)``: ``AutoStepPolicy`` (the search above, on held-out validation
data when given, else on a seeded split carved from the training data) or ``FixedStepPolicy`` (s as given).
Both answer ``choose(weights_at, unit_change, report)`` with the result's ``StepSummary``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from gif.data import Dataset, sample_indices
from gif.errors import InvalidSpecError
from gif.metrics import accuracy, mean_loss, predict, removal_score
from gif.plan import STEP_SEED_OFFSET, RequestPlan
from gif.result import StepSummary
from gif.spec import AutoStep, FixedStep, JobSpec, RemoveClass, RemoveSamples

GRID_POINTS = 13
REFINE_STEPS = 6
MAX_EVALUATIONS = 1 + GRID_POINTS + REFINE_STEPS
MIN_RELATIVE_CHANGE = 1e-4
MAX_RELATIVE_CHANGE = 1.0


@dataclass(frozen=True)
class ValidationData:
    """What the step objective looks at: validation examples of the request and the rest."""

    affected: Dataset  # removed-class validation examples, or the affected samples themselves
    new_labels: torch.Tensor | None  # relabel: targets for ``affected``
    kept: Dataset  # validation examples unaffected by the request


Logits = Callable[[Dataset], torch.Tensor]
Objective = Callable[[ValidationData, Logits], float]
WeightsAt = Callable[[float], dict[str, torch.Tensor]]  # scale ↦ the model's parameters and buffers at θ + s·Δ


def class_removal_objective(val: ValidationData, logits: Logits) -> float:
    return removal_score(accuracy(logits(val.kept), val.kept.y), accuracy(logits(val.affected), val.affected.y))


def relabel_objective(val: ValidationData, logits: Logits) -> float:
    assert val.new_labels is not None
    relabelled = accuracy(logits(val.affected), val.new_labels)
    clean = accuracy(logits(val.kept), val.kept.y)
    return 2 * relabelled * clean / (relabelled + clean) if relabelled + clean > 0 else 0.0


def sample_removal_objective(target_loss: float, min_kept_accuracy: float) -> Callable[[ValidationData, Logits], float]:
    def objective(val: ValidationData, logits: Logits) -> float:
        if accuracy(logits(val.kept), val.kept.y) < min_kept_accuracy:
            return -math.inf
        return -abs(mean_loss(logits(val.affected), val.affected.y) - target_loss)

    return objective


@dataclass
class StepSearch:
    scale: float
    objective: float
    relative_change: float
    trace: list[tuple[float, float]] = field(default_factory=list)  # (scale, objective) in evaluation order


def search_step(objective_at: Callable[[float], float], unit_change: float, plateau: float | None = None) -> StepSearch:
    """Maximise ``objective_at(scale)``; ``unit_change`` = ‖Δ_J‖ / ‖θ_J‖ turns scales into relative changes. With a
    ``plateau`` tolerance, a larger scale whose objective is within it of the best is preferred (class removal: the
    score saturates once no validation example of the class is recognised, and the smallest step that gets there
    leaves unseen ones just across the boundary; ``AutoStep.plateau_tolerance``)."""
    trace: list[tuple[float, float]] = []

    def at_relative(r: float) -> float:
        scale = r / unit_change if r > 0 else 0.0
        value = objective_at(scale)
        trace.append((scale, value))
        return value

    if not unit_change > 0 or not math.isfinite(unit_change):
        return StepSearch(0.0, objective_at(0.0), 0.0, [])
    at_relative(0.0)
    logs = torch.linspace(math.log(MIN_RELATIVE_CHANGE), math.log(MAX_RELATIVE_CHANGE), GRID_POINTS).tolist()
    values = [at_relative(math.exp(lr)) for lr in logs]
    best = max(range(GRID_POINTS), key=lambda i: (values[i], -i))
    lo, hi = logs[max(best - 1, 0)], logs[min(best + 1, GRID_POINTS - 1)]
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = at_relative(math.exp(a)), at_relative(math.exp(b))
    for _ in range(REFINE_STEPS - 2):
        if fa >= fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = at_relative(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = at_relative(math.exp(b))
    scale, value = max(trace, key=lambda t: (t[1], -t[0]))
    if plateau is not None and scale > 0:
        widest = max(s for s, v in trace if v >= value - plateau)
        middle = math.sqrt(scale * widest)
        if middle > scale * 1.01:
            middle_value = at_relative(middle * unit_change)
            if middle_value >= value - plateau:
                scale, value = middle, middle_value
    return StepSearch(scale, value, scale * unit_change, trace)


def validation_data(
    spec: JobSpec, step: AutoStep, plan: RequestPlan, train: Dataset, carved: torch.Tensor, provided: Dataset | None
) -> ValidationData:
    """What the step objective looks at: held-out ``provided`` data if given, else the ``carved`` split."""
    seed = spec.solver.seed + STEP_SEED_OFFSET
    if provided is not None:
        removed = torch.zeros(len(provided), dtype=torch.bool)
        if isinstance(spec.request, RemoveClass):
            removed = torch.isin(provided.y, torch.tensor(spec.request.classes))
        class_examples, kept = provided.split(removed)
    else:
        is_affected = torch.zeros(len(train), dtype=torch.bool)
        is_affected[plan.affected] = True
        class_examples, kept = train.subset(carved).split(is_affected[carved])
    cap = step.max_validation_samples
    kept = kept.subset(sample_indices(torch.arange(len(kept)), cap, seed))
    if plan.class_level and len(class_examples):
        affected, new_labels = class_examples.subset(sample_indices(torch.arange(len(class_examples)), cap, seed)), None
    else:
        chosen = sample_indices(torch.arange(len(plan.affected)), cap, seed)
        affected = train.subset(plan.affected[chosen])
        new_labels = None if plan.new_labels is None else plan.new_labels[chosen]
    if not len(kept):
        raise InvalidSpecError("the validation split holds no unaffected examples; raise validation_fraction")
    return ValidationData(affected, new_labels, kept)


def request_objective(spec: JobSpec, step: AutoStep, model: nn.Module, data: ValidationData) -> Objective:
    """The request's objective, its target and floor measured on the unedited ``model``."""
    if isinstance(spec.request, RemoveClass):
        return class_removal_objective
    if data.new_labels is not None:
        return relabel_objective
    kept_logits = predict(model, data.kept, spec.evaluation.batch_size)
    target = step.target_loss if step.target_loss is not None else mean_loss(kept_logits, data.kept.y)
    return sample_removal_objective(target, accuracy(kept_logits, data.kept.y) - step.max_retain_accuracy_drop)


@dataclass
class AutoStepPolicy:
    """Search s on validation data (see the module docstring)."""

    model: nn.Module
    data: ValidationData
    objective: Objective
    provided: bool  # held-out validation data was given (else the split was carved from the training data)
    batch_size: int
    plateau: float | None = None  # prefer a larger scale within this of the best objective (class removal)

    def choose(self, weights_at: WeightsAt, unit_change: float, report: Callable[[float], None]) -> StepSummary:
        device = next(self.model.parameters()).device
        evaluations = 0

        def objective_at(scale: float) -> float:
            nonlocal evaluations
            evaluations += 1
            report(min(evaluations / MAX_EVALUATIONS, 1.0))  # the plateau may take one evaluation more
            params = weights_at(scale)

            @torch.no_grad()
            def logits(d: Dataset) -> torch.Tensor:
                return torch.cat(
                    [
                        functional_call(self.model, params, (x.to(device),)).float().cpu()
                        for x, _ in d.batches(self.batch_size)
                    ]
                )

            return self.objective(self.data, logits)

        search = search_step(objective_at, unit_change, self.plateau)
        return StepSummary(
            mode="auto",
            scale=search.scale,
            objective=search.objective,
            relative_change=search.relative_change,
            evaluations=len(search.trace),
            validation="provided" if self.provided else "carved",
            validation_samples={"affected": len(self.data.affected), "kept": len(self.data.kept)},
            trace=[(scale, value if math.isfinite(value) else None) for scale, value in search.trace],
        )


@dataclass
class FixedStepPolicy:
    """s as given: θ_J ← θ_J + s·Δ_J exactly."""

    scale: float

    def choose(self, weights_at: WeightsAt, unit_change: float, report: Callable[[float], None]) -> StepSummary:
        return StepSummary(mode="fixed", scale=self.scale)


StepPolicy = AutoStepPolicy | FixedStepPolicy


def step_policy(
    spec: JobSpec, plan: RequestPlan, train: Dataset, carved: torch.Tensor, provided: Dataset | None, model: nn.Module
) -> StepPolicy:
    """The job's step policy; ``carved`` is the split carved from the training data (unused when ``provided``)."""
    step = spec.step
    if isinstance(step, FixedStep):
        return FixedStepPolicy(step.scale)
    data = validation_data(spec, step, plan, train, carved, provided)
    plateau = step.plateau_tolerance if isinstance(spec.request, RemoveClass) else None
    return AutoStepPolicy(
        model,
        data,
        request_objective(spec, step, model, data),
        provided is not None,
        spec.evaluation.batch_size,
        plateau,
    )


def carved_validation_warning(spec: JobSpec, provided: Dataset | None) -> str | None:
    """Removing samples, a step that targets the loss of training examples the model has seen is biased."""
    step = spec.step
    if (
        isinstance(spec.request, RemoveSamples)
        and isinstance(step, AutoStep)
        and step.target_loss is None
        and provided is None
    ):
        return (
            "the step targets the loss of a validation split carved from the training data, which the model "
            "has seen; give validation data the model did not train on, or step.target_loss"
        )
    return None
