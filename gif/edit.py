"""One edit, end to end: plan → select → solve → step → apply → evaluate (→ retrain).

``run`` is the single entry point shared by the command line and the worker. It never touches
storage, queues or HTTP: progress and cancellation cross the boundary as one callback. Each phase
below is one function, timed by the job's ``PhaseClock`` (``gif.job``); the step policy lives in ``gif.step``,
the result's assembly in ``gif.summary``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gif.curvature import (
    HessianOperator,
    LossFn,
    LossTerm,
    ModelObjective,
    cross_entropy_sum,
    expected_solve_products,
)
from gif.data import Dataset, sample_indices
from gif.devices import full_float32, release_cached_memory, reset_peak_memory, resolve_device
from gif.durability import DEFAULT_FINE_TUNE_LR, assess_durability, probes_of
from gif.errors import InvalidSpecError, NonFiniteError, OutOfMemoryError
from gif.influence import InfluenceProblem, InfluenceSolution
from gif.io.files import sha256_file, write_safetensors
from gif.io.programs import read_program, write_program
from gif.job import EditJob, ProgressSink, WeightEdit
from gif.membership import MAX_PER_SIDE, MembershipLosses, assess, not_judged
from gif.metrics import EvaluationPlan, Measurement, example_losses, measure, predict
from gif.models.transforms import InputTransform, apply_input_transform
from gif.parameters import ParameterSpace
from gif.result import CheckpointInfo, Durability, EditResult, Membership
from gif.selection import Selection, full_selection, select
from gif.spec import JobSpec, RemoveClass
from gif.step import carved_validation_warning
from gif.summary import edit_result
from gif.training import reinitialised, train
from gif.training_methods import every_parameter, train_edit


@dataclass
class EditOutcome:
    """What ``run`` returns. The result is never changed in place: writing a file replaces it with a copy that
    records the file (``checkpoint`` or ``program``)."""

    state_dict: dict[str, torch.Tensor]  # the edited checkpoint (parameters and buffers), on the CPU
    result: EditResult
    model: nn.Module  # the edited model

    def write_checkpoint(self, path: str | Path) -> CheckpointInfo:
        """Write the edited weights as safetensors, atomically; the result records them as its ``checkpoint``."""
        write_safetensors(
            path, self.state_dict, metadata={"gif_method": self.result.method, "gif_request": self.result.request}
        )
        return self._recorded("checkpoint", path)

    def write_program(self, original: str | Path, path: str | Path) -> CheckpointInfo:
        """Write the edited model as a ``.pt2`` program: the ``original`` program (re-read by the validating
        loader) with the edited weights; the result records it as its ``program``."""
        write_program(read_program(original), self.state_dict, path)
        return self._recorded("program", path)

    def _recorded(self, field: str, path: str | Path) -> CheckpointInfo:
        written = CheckpointInfo(sha256=sha256_file(path), size_bytes=Path(path).stat().st_size)
        self.result = self.result.model_copy(update={field: written})
        return written


def _select(job: EditJob, gradient_objective: ModelObjective, full: bool) -> Selection:
    if full:
        selection = full_selection(job.original, gradient_objective.batches[0][0][:1])
    else:
        selection = select(job.original, job.spec.selection, gradient_objective.batches, job.loss_fn)
    if selection.num_selected == 0:
        raise InvalidSpecError("the selection ratio selects no parameters; raise selection.ratio")
    return selection


def _solve(
    job: EditJob, selection: Selection, gradient_objective: ModelObjective
) -> tuple[InfluenceSolution, HessianOperator | None]:
    solver = job.spec.solver
    device = next(job.original.parameters()).device
    hessian = None
    if job.method.uses_curvature:
        sample = job.train_data.subset(job.samples.hessian)
        objective = ModelObjective(job.original, [LossTerm(sample, 1.0 / len(sample))], job.loss_fn, solver.batch_size)
        products = expected_solve_products(solver.kind, solver.max_iterations)
        hessian = HessianOperator(objective, solver.damping, solver.hvp, None, solver.curvature, products)

    def monitor(iteration: int, residual: float) -> None:
        done = math.log(max(residual, 1e-300)) / math.log(solver.tolerance) if residual < 1 else 0.0
        job.report("solve", max(iteration / solver.max_iterations, done), iteration, residual)

    selected, candidates = selection.mask.to(device), selection.candidates.to(device)
    problem = InfluenceProblem(hessian, gradient_objective.gradient(), selected, candidates, solver, monitor)
    solution = job.method.solve(problem)
    if not bool(torch.isfinite(solution.delta).all()):
        raise NonFiniteError("the solved influence vector contains NaN or Inf")
    return solution, hessian


def _apply(model: nn.Module, space: ParameterSpace, new_theta: torch.Tensor, scale: float) -> nn.Module:
    """A copy of ``model`` with the flat parameters ``new_theta``; every buffer stays bit-identical."""
    if not bool(torch.isfinite(new_theta).all()):
        raise NonFiniteError(f"the step {scale:g} makes the weights NaN or Inf")
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in space.unflatten(new_theta).items():
            edited.get_parameter(name).copy_(value)
    return edited


def _gradient_objective(job: EditJob) -> ModelObjective:
    terms = job.plan.gradient_terms(job.train_data, job.samples.gradient)
    return ModelObjective(job.original, terms, job.loss_fn, job.spec.solver.batch_size)


def _train_weights(job: EditJob) -> WeightEdit:
    """A training method (``gif.training_methods``): the selection, if the budget asks to train only it, then the
    training and its learning-rate search, reported and timed as the solve and the step search."""
    with job.clock("selection"):
        job.report("selection", 0.0)
        if job.spec.training.selected_only:
            selection = _select(job, _gradient_objective(job), full=False)
        else:
            selection = every_parameter(job.original, job.train_data.x[:1].to(next(job.original.parameters()).device))
        job.report("selection", 1.0)
    return train_edit(job, selection)


def _edit_weights(job: EditJob) -> WeightEdit:
    """select → solve → step → apply on the job's model (left untouched); a training method trains instead."""
    if job.trains:
        return _train_weights(job)
    model, report, clock = job.original, job.report, job.clock
    with clock("selection"):
        report("selection", 0.0)
        gradient_objective = _gradient_objective(job)
        selection = _select(job, gradient_objective, job.method.full_selection)
        report("selection", 1.0)
    with clock("solve"):
        solution, hessian = _solve(job, selection, gradient_objective)
    space = gradient_objective.space
    theta = space.flatten(dict(model.named_parameters())).detach()
    modified, delta = solution.modified, solution.delta
    buffers = dict(model.named_buffers())

    def weights_at(scale: float) -> torch.Tensor:  # θ_J ← θ_J + s·Δ_J; every other entry stays bit-identical
        return torch.where(modified, theta + scale * delta, theta)

    with clock("step_search"):
        unit_change = float(delta[modified].norm() / theta[modified].norm().clamp_min(1e-12))
        step = job.policy.choose(
            lambda s: {**space.unflatten(weights_at(s)), **buffers},
            unit_change,
            lambda fraction: report("step_search", fraction),
        )
    return WeightEdit(_apply(model, space, weights_at(step.scale), step.scale), selection, solution, hessian, step)


def _within_memory(job: EditJob, device: torch.device, warnings: list[str]) -> WeightEdit:
    """``_edit_weights(job)``; if the device runs out of memory, once more with half the batch and no graph cache (a
    training method: an error that says what to lower)."""
    try:
        return _edit_weights(job)
    except torch.OutOfMemoryError:
        if job.trains:
            raise OutOfMemoryError(
                f"{job.spec.method} ran out of memory on {device}; lower training.batch_size or evaluation.batch_size"
            ) from None  # leave the handler first, so that the failed attempt's tensors can be freed
    release_cached_memory(device)
    solver = job.spec.solver.model_copy(
        update={"batch_size": max(1, job.spec.solver.batch_size // 2), "hvp": "double_backward"}
    )
    try:
        edit = _edit_weights(replace(job, spec=job.spec.model_copy(update={"solver": solver})))
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(
            f"the edit ran out of memory on {device}, also with solver.batch_size {solver.batch_size} and no graph "
            "cache; lower solver.batch_size, solver.hessian_samples or selection.ratio, or use a device with more "
            "memory"
        ) from None
    warnings.append(
        f"the device ran out of memory; the edit was redone with solver.batch_size {solver.batch_size} "
        "and no first-order graph cache"
    )
    return edit


def _evaluate(job: EditJob, edited: nn.Module) -> tuple[EvaluationPlan, Measurement, Measurement]:
    """The measurements before and after the edit, and the plan they were measured on (retraining reuses it)."""
    job.report("evaluation", 0.0)
    eval_plan = EvaluationPlan.for_job(job.spec, job.train_data, job.eval_data, job.attack_data, job.plan)
    try:
        before = measure(job.original, eval_plan)
        job.report("evaluation", 0.5)
        after = measure(edited, eval_plan)
    except torch.OutOfMemoryError:
        device = next(job.original.parameters()).device
        raise OutOfMemoryError(f"the evaluation ran out of memory on {device}; lower evaluation.batch_size") from None
    job.report("evaluation", 1.0)
    return eval_plan, before, after


NO_HELDOUT_DATA = (
    "membership could not be judged: the job has no held-out data (a split carved from the training data was seen "
    "in training); give eval data or validation data to learn whether the removed examples still look learned"
)


def _membership(job: EditJob, before: Measurement, after: Measurement, edited: nn.Module) -> Membership | None:
    """The membership verdict of a removal (``gif.membership``; none for relabel): from the evaluation's own
    per-example losses when there is eval data, else from one pass of each model over the given validation data."""
    if job.plan.new_labels is not None:
        return None
    seed, class_level = job.spec.solver.seed, job.plan.class_level
    if job.eval_data is not None:
        empty = torch.empty(0)
        like_removed = "eval_forgotten" if class_level else "eval_kept"
        original, edited_losses = (
            MembershipLosses(
                m.losses["affected"],
                m.losses.get(like_removed, empty),
                m.losses["retain"],
                m.losses.get("eval_kept", empty),
            )
            for m in (before, after)
        )
        return assess(original, edited_losses, "eval", seed, class_level)
    if job.validation_data is None:
        return not_judged(NO_HELDOUT_DATA)
    data = job.validation_data
    if isinstance(job.spec.request, RemoveClass):
        like_removed_data, kept_data = data.split(torch.isin(data.y, torch.tensor(job.spec.request.classes)))
    else:
        like_removed_data = kept_data = data
    like_removed_data, kept_data = (
        d.subset(sample_indices(torch.arange(len(d)), MAX_PER_SIDE, seed)) for d in (like_removed_data, kept_data)
    )
    batch_size = job.spec.evaluation.batch_size

    def losses_of(model: nn.Module, measured: Measurement) -> MembershipLosses:
        kept = example_losses(predict(model, kept_data.x, batch_size), kept_data.y)
        like_removed = (
            example_losses(predict(model, like_removed_data.x, batch_size), like_removed_data.y)
            if class_level
            else kept
        )
        return MembershipLosses(measured.losses["affected"], like_removed, measured.losses["retain"], kept)

    return assess(losses_of(job.original, before), losses_of(edited, after), "validation", seed, class_level)


def _durability(
    job: EditJob, edited: nn.Module, eval_plan: EvaluationPlan, before: Measurement, after: Measurement
) -> Durability | None:
    """The durability checks the job asked for (``gif.durability``), on the evaluation's own plan."""
    spec = job.spec
    lr = spec.retrain.lr if spec.retrain is not None else DEFAULT_FINE_TUNE_LR
    train = job.train_data
    probes = probes_of(spec.durability, job.plan, train.x, train.y, lr, spec.solver.seed)
    return assess_durability(edited, eval_plan, before, after, probes)


def _retrain(job: EditJob, eval_plan: EvaluationPlan) -> Measurement:
    """The ground truth: the same architecture trained from scratch on the edited training data, measured alike."""
    assert job.spec.retrain is not None
    model = reinitialised(job.original, job.spec.retrain.seed)
    train(
        model,
        job.plan.edited_training_data(job.train_data),
        job.spec.retrain,
        on_epoch=lambda done, total: job.report("retrain", done / total),
    )
    return measure(model, eval_plan)


def run(
    spec: JobSpec,
    model: nn.Module,
    train_data: Dataset,
    eval_data: Dataset | None = None,
    progress: ProgressSink | None = None,
    *,
    validation_data: Dataset | None = None,
    attack_data: Dataset | None = None,
    loss_fn: LossFn = cross_entropy_sum,
    device: torch.device | str | None = None,
    input_transform: InputTransform | dict[str, Any] | None = None,
) -> EditOutcome:
    """Edit ``model`` (left untouched) as ``spec`` asks and measure the result.

    ``train_data`` is the data the model was trained on (indices in the request refer to it);
    ``eval_data``, when given, is held-out data for the reported metrics only; ``validation_data``,
    when given, is held-out data the step search uses instead of a split carved from the training data;
    ``attack_data`` (relabel only), held-out inputs carrying a backdoor's trigger with their true labels.
    ``device`` is a device or ``"auto"`` (the default: CUDA when there is one); the result's ``device`` entry
    names it and reports the edit's peak memory there. ``input_transform``, the preprocessing the model was trained
    with, is applied to every dataset first, on ``device`` (the result's ``data.input_transform`` says which ran).
    """
    started = time.perf_counter()
    device = resolve_device(device if device is not None else "auto")
    with full_float32(device):  # TF32 would move the solve, and CUDA's edit away from the CPU's
        reset_peak_memory(device)
        given = {"train": train_data, "eval": eval_data, "validation": validation_data, "attack": attack_data}
        fed = apply_input_transform({k: v for k, v in given.items() if v is not None}, input_transform, device)
        job = EditJob.prepare(
            spec,
            model,
            fed["train"],
            fed.get("eval"),
            fed.get("validation"),
            fed.get("attack"),
            loss_fn,
            progress,
            device,
        )
        warnings = [warning] if (warning := carved_validation_warning(spec, validation_data)) else []
        edit = _within_memory(job, device, warnings)
        with job.clock("evaluation"):
            eval_plan, before, after = _evaluate(job, edit.model)
            membership = _membership(job, before, after, edit.model)
            durability = _durability(job, edit.model, eval_plan, before, after)
        retrained = None
        if spec.retrain is not None:
            with job.clock("retrain"):
                retrained = _retrain(job, eval_plan)
        result = edit_result(
            job, edit, before, after, retrained, membership, warnings, time.perf_counter() - started, device
        )
        if durability is not None:
            extra = [] if durability.holds else [durability.verdict]
            result = result.model_copy(update={"durability": durability, "warnings": result.warnings + extra})
        if input_transform is not None and result.data is not None:
            ran = InputTransform.model_validate(input_transform).describe()
            result = result.model_copy(update={"data": result.data.model_copy(update={"input_transform": ran})})
        state = {k: v.detach().cpu().clone() for k, v in edit.model.state_dict().items()}
        return EditOutcome(state, result, edit.model)
