"""One edit, end to end: select → solve → step → apply → evaluate (→ retrain).

``run`` is the single entry point shared by the command line and the worker. It never touches
storage, queues or HTTP: progress and cancellation cross the boundary as one callback.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.func import functional_call

from gif.curvature import HessianOperator, LossFn, LossTerm, ModelObjective, cross_entropy_sum
from gif.data import Dataset, check_labels, sample_indices, split_indices
from gif.devices import device_report, reset_peak_memory, resolve_device
from gif.errors import InvalidSpecError, NonFiniteError, OutOfMemoryError
from gif.files import sha256_file, write_safetensors
from gif.influence import USES_CURVATURE, USES_FULL_SELECTION, InfluenceSolution, RequestPlan, solve_influence
from gif.metrics import accuracy, evaluate, evaluation_plan, mean_loss, predict
from gif.parameters import ParameterSpace, candidate_mask
from gif.selection import Selection, full_selection, select
from gif.spec import AutoStep, JobSpec, RemoveClass, RemoveSamples, check_request
from gif.step import (
    MAX_EVALUATIONS,
    Logits,
    ValidationData,
    class_removal_objective,
    relabel_objective,
    sample_removal_objective,
    search_step,
)
from gif.training import reinitialised, train

# Share of the progress bar each phase covers (retraining, when asked for, takes the last part).
PHASES = {"selection": (0.0, 0.1), "solve": (0.1, 0.6), "step_search": (0.6, 0.8), "evaluation": (0.8, 1.0)}
PHASES_WITH_RETRAIN = {**{k: (a * 0.5, b * 0.5) for k, (a, b) in PHASES.items()}, "retrain": (0.5, 1.0)}
STEP_SEED_OFFSET = 1
GRADIENT_SEED_OFFSET = 2


class ProgressSink(Protocol):
    """Receives progress; raising ``EditCancelled`` (or any error) from it stops the edit."""

    def __call__(
        self, phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
    ) -> None: ...


def _ignore_progress(phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None) -> None:
    return None


@dataclass
class EditOutcome:
    state_dict: dict[str, torch.Tensor]  # the edited checkpoint (parameters and buffers), on the CPU
    result: dict[str, Any]  # the contract's ``result`` object (without ``checkpoint``: see write_checkpoint)
    model: nn.Module  # the edited model

    def write_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Write the edited weights as safetensors, atomically; return the result's ``checkpoint`` entry."""
        metadata = {"gif_method": self.result["method"], "gif_request": self.result["request"]}
        write_safetensors(path, self.state_dict, metadata=metadata)
        return {"sha256": sha256_file(path), "size_bytes": Path(path).stat().st_size}


class _Progress:
    """Maps phase-local fractions onto the whole job and forwards them to the sink."""

    def __init__(self, sink: ProgressSink, with_retrain: bool):
        self.sink = sink
        self.ranges = PHASES_WITH_RETRAIN if with_retrain else PHASES

    def __call__(self, phase: str, local: float, iteration: int | None = None, residual: float | None = None) -> None:
        start, end = self.ranges[phase]
        self.sink(phase, start + (end - start) * min(max(local, 0.0), 1.0), iteration, residual)


def check_inputs(
    model: nn.Module, spec: JobSpec, train: Dataset, eval_data: Dataset | None = None, validation_data: Dataset | None = None
) -> int:
    """Refuse what can be refused before any work (input shape, labels, request ranges); return the class count."""
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            out = model.eval()(train.x[:1].to(device))
    except RuntimeError as exc:
        raise InvalidSpecError(
            f"the model cannot take samples of shape {train.sample_shape}: {str(exc).splitlines()[0]}"
        ) from None
    if out.dim() != 2:
        raise InvalidSpecError(f"the model returns shape {list(out.shape[1:])} per sample, not a vector of logits")
    num_classes = int(out.shape[1])
    check_labels(train, num_classes, "the training data")
    for name, extra in (("eval", eval_data), ("validation", validation_data)):
        if extra is not None:
            check_labels(extra, num_classes, f"the {name} data")
            if extra.sample_shape != train.sample_shape:
                raise InvalidSpecError(
                    f"{name} samples have shape {extra.sample_shape} but training samples {train.sample_shape}"
                )
    check_request(spec.request, torch.bincount(train.y, minlength=num_classes).tolist(), num_classes)
    return num_classes


def carved_validation_indices(spec: JobSpec, num_train: int) -> torch.Tensor:
    """The seeded validation split the automatic step carves from the training data."""
    step: AutoStep = spec.step  # type: ignore[assignment]
    return split_indices(num_train, step.validation_fraction, spec.solver.seed + STEP_SEED_OFFSET)[0]


def step_validation(
    spec: JobSpec, plan: RequestPlan, train: Dataset, validation_idx: torch.Tensor, validation: Dataset | None
) -> ValidationData:
    """What the step objective looks at: held-out ``validation`` data if given, else the carved split."""
    step: AutoStep = spec.step  # type: ignore[assignment]
    seed = spec.solver.seed + STEP_SEED_OFFSET
    if validation is not None:  # held-out data given by the user
        kept_mask = torch.ones(len(validation), dtype=torch.bool)
        if isinstance(spec.request, RemoveClass):
            kept_mask = ~torch.isin(validation.y, torch.tensor(spec.request.classes))
        kept = validation.subset(torch.nonzero(kept_mask).flatten())
        class_examples = validation.subset(torch.nonzero(~kept_mask).flatten())
    else:
        is_affected = torch.zeros(len(train), dtype=torch.bool)
        is_affected[plan.affected] = True
        kept = train.subset(validation_idx[~is_affected[validation_idx]])
        class_examples = train.subset(validation_idx[is_affected[validation_idx]])
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


@dataclass(frozen=True)
class _Samples:
    """The seeded index sets one job uses (all into the training data)."""

    validation: torch.Tensor  # carved validation split (empty when held-out data is given or the step is fixed)
    hessian: torch.Tensor  # retained examples in the Hessian sample
    gradient: torch.Tensor  # affected examples in the gradient (and selection) sample


def _draw_samples(spec: JobSpec, plan: RequestPlan, num_train: int, carve_validation: bool) -> _Samples:
    solver = spec.solver
    validation = carved_validation_indices(spec, num_train) if carve_validation else torch.empty(0, dtype=torch.long)
    gradient_pool = plan.affected
    if plan.class_level and len(validation):  # keep held-out examples of the class for the step objective
        outside = plan.affected[~torch.isin(plan.affected, validation)]
        gradient_pool = outside if len(outside) else plan.affected
    return _Samples(
        validation,
        sample_indices(plan.retained, solver.hessian_samples, solver.seed),
        sample_indices(gradient_pool, solver.gradient_samples, solver.seed + GRADIENT_SEED_OFFSET),
    )


@dataclass
class _Edit:
    """One linearisation at the model's weights: what was selected, solved, stepped and applied."""

    model: nn.Module
    selection: Selection
    solution: InfluenceSolution
    hessian: HessianOperator | None
    step: dict[str, Any]
    timings: dict[str, float]


def _edit_once(
    spec: JobSpec,
    model: nn.Module,
    train_data: Dataset,
    plan: RequestPlan,
    samples: _Samples,
    validation: tuple[ValidationData, Callable[[ValidationData, Logits], float]] | None,
    loss_fn: LossFn,
    report: "_Progress",
) -> _Edit:
    """select → solve → step → apply on ``model`` (left untouched); ``validation`` is None for a fixed step."""
    solver, timings = spec.solver, {}
    device = next(model.parameters()).device

    t0 = time.perf_counter()
    report("selection", 0.0)
    gradient_objective = ModelObjective(model, plan.gradient_terms(train_data, samples.gradient), loss_fn, solver.batch_size)
    if spec.method in USES_FULL_SELECTION:
        selection = full_selection(model)
    else:
        selection = select(model, spec.selection, gradient_objective.batches, loss_fn)
    if selection.num_selected == 0:
        raise InvalidSpecError("the selection ratio selects no parameters; raise selection.ratio")
    report("selection", 1.0)
    timings["selection_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    g = gradient_objective.gradient()
    space = ParameterSpace.of(model)
    hessian = None
    if spec.method in USES_CURVATURE:
        hessian_sample = train_data.subset(samples.hessian)
        hessian = HessianOperator(
            ModelObjective(model, [LossTerm(hessian_sample, 1.0 / len(hessian_sample))], loss_fn, solver.batch_size),
            solver.damping, solver.hvp,
        )

    def monitor(iteration: int, residual: float) -> None:
        done = math.log(max(residual, 1e-300)) / math.log(solver.tolerance) if residual < 1 else 0.0
        report("solve", max(iteration / solver.max_iterations, done), iteration, residual)

    solution = solve_influence(
        spec.method, hessian, g, selection.mask.to(device), candidate_mask(model, space).to(device), solver, monitor
    )
    if not bool(torch.isfinite(solution.delta).all()):
        raise NonFiniteError("the solved influence vector contains NaN or Inf")
    timings["solve_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    theta = space.flatten(dict(model.named_parameters())).detach()
    modified, delta = solution.modified, solution.delta

    def weights_at(scale: float) -> torch.Tensor:
        return torch.where(modified, theta + scale * delta, theta)

    step: dict[str, Any] = {"mode": spec.step.mode}
    if validation is None:
        scale = spec.step.scale
        step["scale"] = scale
    else:
        data, objective = validation
        buffers = dict(model.named_buffers())
        evaluations = 0

        def objective_at(scale: float) -> float:
            nonlocal evaluations
            evaluations += 1
            report("step_search", evaluations / MAX_EVALUATIONS)
            params = {**space.unflatten(weights_at(scale)), **buffers}

            @torch.no_grad()
            def logits(d: Dataset) -> torch.Tensor:
                return torch.cat([functional_call(model, params, (x.to(device),)).float().cpu()
                                  for x, _ in d.batches(spec.evaluation.batch_size)])

            return objective(data, logits)

        search = search_step(objective_at, float(delta[modified].norm() / theta[modified].norm().clamp_min(1e-12)))
        scale = search.scale
        step.update(scale=scale, objective=search.objective, relative_change=search.relative_change,
                    evaluations=len(search.trace))
    timings["step_search_s"] = time.perf_counter() - t0

    # θ_J ← θ_J + s·Δ_J; every other entry (and every buffer) stays bit-identical
    new_theta = weights_at(scale)
    if not bool(torch.isfinite(new_theta).all()):
        raise NonFiniteError(f"the step {scale:g} makes the weights NaN or Inf")
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in space.unflatten(new_theta).items():
            edited.get_parameter(name).copy_(value)
    return _Edit(edited, selection, solution, hessian, step, timings)


def _edit_within_memory(
    spec: JobSpec,
    model: nn.Module,
    train_data: Dataset,
    plan: RequestPlan,
    samples: _Samples,
    validation: tuple[ValidationData, Callable[[ValidationData, Logits], float]] | None,
    loss_fn: LossFn,
    report: "_Progress",
    warnings: list[str],
) -> _Edit:
    """``_edit_once``; if the device runs out of memory, once more with half the batch and no graph cache."""
    try:
        return _edit_once(spec, model, train_data, plan, samples, validation, loss_fn, report)
    except torch.OutOfMemoryError:
        pass  # leave the handler first, so that the failed attempt's tensors can be freed
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.empty_cache()
    solver = spec.solver.model_copy(update={"batch_size": max(1, spec.solver.batch_size // 2), "hvp": "double_backward"})
    try:
        edit = _edit_once(spec.model_copy(update={"solver": solver}), model, train_data, plan, samples, validation,
                          loss_fn, report)
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(
            f"the edit ran out of memory on {device}, also with solver.batch_size {solver.batch_size} and no graph "
            "cache; lower solver.batch_size, solver.hessian_samples or selection.ratio, or use a device with more memory"
        ) from None
    warnings.append(f"the device ran out of memory; the edit was redone with solver.batch_size {solver.batch_size} "
                    "and no first-order graph cache")
    return edit


def run(
    spec: JobSpec,
    model: nn.Module,
    train_data: Dataset,
    eval_data: Dataset | None = None,
    progress: ProgressSink | None = None,
    *,
    validation_data: Dataset | None = None,
    loss_fn: LossFn = cross_entropy_sum,
    device: torch.device | str | None = None,
) -> EditOutcome:
    """Edit ``model`` (left untouched) as ``spec`` asks and measure the result.

    ``train_data`` is the data the model was trained on (indices in the request refer to it);
    ``eval_data``, when given, is held-out data for the reported metrics only; ``validation_data``,
    when given, is held-out data the step search uses instead of a split carved from the training data.
    ``device`` is a device or ``"auto"`` (the default: CUDA when there is one); the result's ``device`` entry
    names it and reports the edit's peak memory there.
    """
    started = time.perf_counter()
    report = _Progress(progress or _ignore_progress, spec.retrain is not None)
    device = resolve_device(device if device is not None else "auto")
    reset_peak_memory(device)
    original = copy.deepcopy(model).to(device).eval()
    check_inputs(original, spec, train_data, eval_data, validation_data)
    plan = RequestPlan.of(spec.request, train_data)
    auto_step = isinstance(spec.step, AutoStep)
    samples = _draw_samples(spec, plan, len(train_data), auto_step and validation_data is None)
    warnings: list[str] = []
    validation = None
    if auto_step:
        data = step_validation(spec, plan, train_data, samples.validation, validation_data)
        validation = (data, step_objective(spec, original, data))
        if isinstance(spec.request, RemoveSamples) and spec.step.target_loss is None and validation_data is None:
            warnings.append(
                "the step targets the loss of a validation split carved from the training data, which the model "
                "has seen; give validation data the model did not train on, or step.target_loss"
            )

    edit = _edit_within_memory(spec, original, train_data, plan, samples, validation, loss_fn, report, warnings)
    solve = edit.solution.solve
    if solve is not None and not solve.converged:
        warnings.append(
            f"the solver stopped after {solve.iterations} iterations at relative residual "
            f"{solve.relative_residual:.3g} (tolerance {spec.solver.tolerance:g}): the solved vector is approximate; "
            "raise solver.max_iterations for a tighter solve"
        )
    if validation is not None:
        edit.step.update(validation="provided" if validation_data is not None else "carved",
                         validation_samples={"affected": len(validation[0].affected), "kept": len(validation[0].kept)})

    timings: dict[str, float | None] = dict(edit.timings)
    t0 = time.perf_counter()
    report("evaluation", 0.0)
    removed_classes = spec.request.classes if isinstance(spec.request, RemoveClass) else None
    eval_plan = evaluation_plan(
        train_data, eval_data, plan.affected, plan.retained, plan.new_labels, removed_classes,
        spec.evaluation.retain_samples, spec.solver.seed, spec.evaluation.batch_size,
    )
    try:
        metrics = {"before": evaluate(original, eval_plan)}
        report("evaluation", 0.5)
        metrics["after"] = evaluate(edit.model, eval_plan)
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(f"the evaluation ran out of memory on {device}; lower evaluation.batch_size") from None
    report("evaluation", 1.0)
    timings["evaluation_s"] = time.perf_counter() - t0
    metrics["retrained"], timings["retrain_s"] = None, None
    if spec.retrain is not None:
        t0 = time.perf_counter()
        retrained = reinitialised(original, spec.retrain.seed)
        train(retrained, plan.edited_training_data(train_data), spec.retrain,
              on_epoch=lambda done, total: report("retrain", done / total))
        timings["retrain_s"] = time.perf_counter() - t0
        metrics["retrained"] = evaluate(retrained, eval_plan)
    timings["total_s"] = time.perf_counter() - started

    criterion = "all" if spec.method in USES_FULL_SELECTION else spec.selection.criterion
    result = {
        "method": spec.method,
        "request": spec.request.kind,
        "selection": {**edit.selection.summary(), "criterion": criterion,
                      "layers": [vars(layer) for layer in edit.selection.layers]},
        "solver": _solver_summary(spec, edit.solution, edit.hessian),
        "step": edit.step,
        "metrics": metrics,
        "timings": timings,
        "data": {
            "train_samples": len(train_data),
            "affected_samples": len(plan.affected),
            "hessian_samples": len(samples.hessian),
            "gradient_samples": len(samples.gradient),
            "coefficient": plan.coefficient,
            "device": str(device),
        },
        "device": device_report(device),
        "warnings": warnings,
    }
    state = {k: v.detach().cpu().clone() for k, v in edit.model.state_dict().items()}
    return EditOutcome(state, result, edit.model)


def step_objective(spec: JobSpec, model: nn.Module, validation: ValidationData) -> Callable[[ValidationData, Logits], float]:
    """The request's step objective (gif.step), its target and floor measured on the unedited ``model``."""
    if isinstance(spec.request, RemoveClass):
        return class_removal_objective
    if validation.new_labels is not None:
        return relabel_objective
    kept_logits = predict(model, validation.kept.x, spec.evaluation.batch_size)
    target = spec.step.target_loss
    if target is None:
        target = mean_loss(kept_logits, validation.kept.y)
    floor = accuracy(kept_logits, validation.kept.y) - spec.step.max_retain_accuracy_drop
    return sample_removal_objective(target, floor)


def _solver_summary(spec: JobSpec, solution, hessian: HessianOperator | None) -> dict[str, Any]:
    solve = solution.solve
    if solve is None:
        return {"kind": "none", "iterations": 0, "hvp_count": 0, "relative_residual": 0.0, "converged": True, "scale": 1.0}
    return {
        "kind": spec.solver.kind,
        "iterations": solve.iterations,
        "hvp_count": hessian.count if hessian else 0,
        "relative_residual": solve.relative_residual,
        "converged": solve.converged,
        "scale": solve.scale,
        "restarts": solve.restarts,
        "lambda_max": solve.lambda_max,
        "damping": spec.solver.damping,
        "hvp_method": hessian.method if hessian else None,
        "hvp_trial_seconds": hessian.trial_seconds if hessian else {},
        "hvp_cached_batches": hessian.cached_batches if hessian else 0,
        "hvp_seconds": hessian.seconds if hessian else 0.0,
        "residual_history": solve.history[-200:],
    }
