"""One edit, end to end: plan → select → solve → step → apply → evaluate (→ retrain).

``run`` is the single entry point shared by the command line and the worker. It never touches
storage, queues or HTTP: progress and cancellation cross the boundary as one callback. Each phase
below is one function, timed by one ``PhaseClock``; the step policy lives in ``gif.step``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from gif import devices
from gif.checks import JobPart, check_job_fit
from gif.curvature import HessianOperator, LossFn, LossTerm, ModelObjective, cross_entropy_sum
from gif.data import Dataset, DatasetSummary, sample_indices
from gif.devices import (
    device_report,
    full_float32,
    release_cached_memory,
    reset_peak_memory,
    resolve_device,
    synchronize,
)
from gif.errors import InvalidSpecError, NonFiniteError, OutOfMemoryError
from gif.files import sha256_file, write_safetensors
from gif.influence import USES_CURVATURE, USES_FULL_SELECTION, InfluenceSolution, solve_influence
from gif.metrics import EvaluationPlan, Measurement, evaluation_plan, measure
from gif.parameters import ParameterSpace
from gif.plan import RequestPlan
from gif.programs import read_program, write_program
from gif.result import (
    CheckpointInfo,
    ClassAccuracy,
    DataSummary,
    DeviceReport,
    EditResult,
    LayerSelection,
    Metrics,
    SelectionSummary,
    SolverSummary,
    StepSummary,
    Timings,
)
from gif.selection import Selection, full_selection, select
from gif.spec import AutoStep, JobSpec, Relabel, RemoveClass
from gif.step import StepPolicy, carved_validation_indices, carved_validation_warning, step_policy
from gif.training import reinitialised, train

# Share of the progress bar each phase covers (retraining, when asked for, takes the last part).
PHASES = {"selection": (0.0, 0.1), "solve": (0.1, 0.6), "step_search": (0.6, 0.8), "evaluation": (0.8, 1.0)}
PHASES_WITH_RETRAIN = {**{k: (a * 0.5, b * 0.5) for k, (a, b) in PHASES.items()}, "retrain": (0.5, 1.0)}
GRADIENT_SEED_OFFSET = 2


class ProgressSink(Protocol):
    """Receives progress; raising ``EditCancelled`` (or any error) from it stops the edit."""

    def __call__(
        self, phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
    ) -> None: ...


def _ignore_progress(
    phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
) -> None:
    return None


@dataclass
class EditOutcome:
    state_dict: dict[str, torch.Tensor]  # the edited checkpoint (parameters and buffers), on the CPU
    result: EditResult  # ``checkpoint`` is filled in by ``write_checkpoint``
    model: nn.Module  # the edited model

    def write_checkpoint(self, path: str | Path) -> CheckpointInfo:
        """Write the edited weights as safetensors, atomically, and record them as the result's ``checkpoint``."""
        write_safetensors(
            path, self.state_dict, metadata={"gif_method": self.result.method, "gif_request": self.result.request}
        )
        self.result.checkpoint = CheckpointInfo(sha256=sha256_file(path), size_bytes=Path(path).stat().st_size)
        return self.result.checkpoint

    def write_program(self, original: str | Path, path: str | Path) -> CheckpointInfo:
        """Write the edited model as a ``.pt2`` program: the ``original`` program (re-read by the validating
        loader) with the edited weights; recorded as the result's ``program``."""
        write_program(read_program(original), self.state_dict, path)
        self.result.program = CheckpointInfo(sha256=sha256_file(path), size_bytes=Path(path).stat().st_size)
        return self.result.program


class _Progress:
    """Maps phase-local fractions onto the whole job and forwards them to the sink."""

    def __init__(self, sink: ProgressSink, with_retrain: bool):
        self.sink = sink
        self.ranges = PHASES_WITH_RETRAIN if with_retrain else PHASES

    def __call__(self, phase: str, local: float, iteration: int | None = None, residual: float | None = None) -> None:
        start, end = self.ranges[phase]
        self.sink(phase, start + (end - start) * min(max(local, 0.0), 1.0), iteration, residual)


class PhaseClock:
    """Wall-clock seconds per phase, as the result's ``timings`` names them (``<phase>_s``); the device's queued
    kernels are waited for at each end, so that a phase's time is its own (CUDA runs them asynchronously)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[f"{phase}_s"] = time.perf_counter() - start


def check_inputs(
    model: nn.Module,
    spec: JobSpec,
    train: Dataset,
    eval_data: Dataset | None = None,
    validation_data: Dataset | None = None,
    attack_data: Dataset | None = None,
) -> int:
    """Refuse what can be refused before any work (``gif.checks``: input shape, labels, request ranges); return the
    class count. The model's output shape is measured on one real training sample."""
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            output_shape: tuple[int, ...] | str = tuple(model.eval()(train.x[:1].to(device)).shape)
    except RuntimeError as exc:
        output_shape = str(exc).splitlines()[0]
    data: dict[JobPart, DatasetSummary] = {"train": DatasetSummary.of(train)}
    if eval_data is not None:
        data["eval"] = DatasetSummary.of(eval_data)
    if validation_data is not None:
        data["validation"] = DatasetSummary.of(validation_data)
    if attack_data is not None:
        data["attack"] = DatasetSummary.of(attack_data)
    return check_job_fit(spec, output_shape, data)


@dataclass(frozen=True)
class Samples:
    """The seeded index sets one job uses (all into the training data)."""

    validation: torch.Tensor  # carved validation split (empty when held-out data is given or the step is fixed)
    hessian: torch.Tensor  # retained examples in the Hessian sample
    gradient: torch.Tensor  # affected examples in the gradient (and selection) sample


def draw_samples(spec: JobSpec, plan: RequestPlan, num_train: int, carve_validation: bool) -> Samples:
    solver = spec.solver
    validation = torch.empty(0, dtype=torch.long)
    if carve_validation and isinstance(spec.step, AutoStep):
        validation = carved_validation_indices(spec.step, num_train, solver.seed)
    return Samples(
        validation,
        sample_indices(plan.retained, solver.hessian_samples, solver.seed),
        sample_indices(gradient_pool(plan, validation), solver.gradient_samples, solver.seed + GRADIENT_SEED_OFFSET),
    )


def gradient_pool(plan: RequestPlan, validation: torch.Tensor) -> torch.Tensor:
    """The affected examples an edit may learn from: for a class removal, those outside the carved ``validation``
    split, whose examples of the class the step objective keeps as held-out ones (all of them if none is outside)."""
    if plan.class_level and len(validation):
        outside = plan.affected[~torch.isin(plan.affected, validation)]
        return outside if len(outside) else plan.affected
    return plan.affected


@dataclass
class _WeightEdit:
    """What was selected, solved, stepped and applied on the model's weights."""

    model: nn.Module
    selection: Selection
    solution: InfluenceSolution
    hessian: HessianOperator | None
    step: StepSummary


def _select(spec: JobSpec, model: nn.Module, gradient_objective: ModelObjective, loss_fn: LossFn) -> Selection:
    if spec.method in USES_FULL_SELECTION:
        selection = full_selection(model, gradient_objective.batches[0][0][:1])
    else:
        selection = select(model, spec.selection, gradient_objective.batches, loss_fn)
    if selection.num_selected == 0:
        raise InvalidSpecError("the selection ratio selects no parameters; raise selection.ratio")
    return selection


def _solve(
    spec: JobSpec,
    model: nn.Module,
    train_data: Dataset,
    samples: Samples,
    selection: Selection,
    gradient_objective: ModelObjective,
    loss_fn: LossFn,
    report: _Progress,
) -> tuple[InfluenceSolution, HessianOperator | None]:
    solver = spec.solver
    device = next(model.parameters()).device
    g = gradient_objective.gradient()
    hessian = None
    if spec.method in USES_CURVATURE:
        hessian_sample = train_data.subset(samples.hessian)
        hessian = HessianOperator(
            ModelObjective(model, [LossTerm(hessian_sample, 1.0 / len(hessian_sample))], loss_fn, solver.batch_size),
            solver.damping,
            solver.hvp,
        )

    def monitor(iteration: int, residual: float) -> None:
        done = math.log(max(residual, 1e-300)) / math.log(solver.tolerance) if residual < 1 else 0.0
        report("solve", max(iteration / solver.max_iterations, done), iteration, residual)

    solution = solve_influence(
        spec.method, hessian, g, selection.mask.to(device), selection.candidates.to(device), solver, monitor
    )
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


def _edit_weights(
    spec: JobSpec,
    model: nn.Module,
    train_data: Dataset,
    plan: RequestPlan,
    samples: Samples,
    policy: StepPolicy,
    loss_fn: LossFn,
    report: _Progress,
    clock: PhaseClock,
) -> _WeightEdit:
    """select → solve → step → apply on ``model`` (left untouched)."""
    with clock("selection"):
        report("selection", 0.0)
        gradient_objective = ModelObjective(
            model, plan.gradient_terms(train_data, samples.gradient), loss_fn, spec.solver.batch_size
        )
        selection = _select(spec, model, gradient_objective, loss_fn)
        report("selection", 1.0)
    with clock("solve"):
        solution, hessian = _solve(spec, model, train_data, samples, selection, gradient_objective, loss_fn, report)
    space = gradient_objective.space
    theta = space.flatten(dict(model.named_parameters())).detach()
    modified, delta = solution.modified, solution.delta
    buffers = dict(model.named_buffers())

    def weights_at(scale: float) -> torch.Tensor:  # θ_J ← θ_J + s·Δ_J; every other entry stays bit-identical
        return torch.where(modified, theta + scale * delta, theta)

    with clock("step_search"):
        unit_change = float(delta[modified].norm() / theta[modified].norm().clamp_min(1e-12))
        step = policy.choose(
            lambda s: {**space.unflatten(weights_at(s)), **buffers},
            unit_change,
            lambda fraction: report("step_search", fraction),
        )
    return _WeightEdit(_apply(model, space, weights_at(step.scale), step.scale), selection, solution, hessian, step)


def _within_memory(
    attempt: Callable[[JobSpec], _WeightEdit], spec: JobSpec, device: torch.device, warnings: list[str]
) -> _WeightEdit:
    """``attempt(spec)``; if the device runs out of memory, once more with half the batch and no graph cache."""
    try:
        return attempt(spec)
    except torch.OutOfMemoryError:
        pass  # leave the handler first, so that the failed attempt's tensors can be freed
    release_cached_memory(device)
    solver = spec.solver.model_copy(
        update={"batch_size": max(1, spec.solver.batch_size // 2), "hvp": "double_backward"}
    )
    try:
        edit = attempt(spec.model_copy(update={"solver": solver}))
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


def job_evaluation_plan(
    spec: JobSpec, train_data: Dataset, eval_data: Dataset | None, attack_data: Dataset | None, plan: RequestPlan
) -> EvaluationPlan:
    """What a job's metrics measure every model on (the original, the edited, the retrained; the benchmarks'
    baselines too), seeded by the job."""
    return evaluation_plan(
        train_data,
        eval_data,
        plan.affected,
        plan.retained,
        plan.new_labels,
        spec.request.classes if isinstance(spec.request, RemoveClass) else None,
        spec.evaluation.retain_samples,
        spec.solver.seed,
        spec.evaluation.batch_size,
        attack=attack_data,
        attack_target=spec.request.attack_target if isinstance(spec.request, Relabel) else None,
    )


def _evaluate(
    spec: JobSpec,
    original: nn.Module,
    edited: nn.Module,
    train_data: Dataset,
    eval_data: Dataset | None,
    attack_data: Dataset | None,
    plan: RequestPlan,
    report: _Progress,
) -> tuple[EvaluationPlan, Measurement, Measurement]:
    """The measurements before and after the edit, and the plan they were measured on (retraining reuses it)."""
    report("evaluation", 0.0)
    eval_plan = job_evaluation_plan(spec, train_data, eval_data, attack_data, plan)
    device = next(original.parameters()).device
    try:
        before = measure(original, eval_plan)
        report("evaluation", 0.5)
        after = measure(edited, eval_plan)
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(f"the evaluation ran out of memory on {device}; lower evaluation.batch_size") from None
    report("evaluation", 1.0)
    return eval_plan, before, after


def _retrain(
    spec: JobSpec,
    original: nn.Module,
    train_data: Dataset,
    plan: RequestPlan,
    eval_plan: EvaluationPlan,
    report: _Progress,
) -> Measurement:
    """The ground truth: the same architecture trained from scratch on the edited training data, measured alike."""
    assert spec.retrain is not None
    model = reinitialised(original, spec.retrain.seed)
    train(
        model,
        plan.edited_training_data(train_data),
        spec.retrain,
        on_epoch=lambda done, total: report("retrain", done / total),
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
) -> EditOutcome:
    """Edit ``model`` (left untouched) as ``spec`` asks and measure the result.

    ``train_data`` is the data the model was trained on (indices in the request refer to it);
    ``eval_data``, when given, is held-out data for the reported metrics only; ``validation_data``,
    when given, is held-out data the step search uses instead of a split carved from the training data;
    ``attack_data`` (relabel only), held-out inputs carrying a backdoor's trigger with their true labels.
    ``device`` is a device or ``"auto"`` (the default: CUDA when there is one); the result's ``device`` entry
    names it and reports the edit's peak memory there.
    """
    if spec.retrain is not None and isinstance(model, torch.fx.GraphModule):
        raise InvalidSpecError(
            "retrain needs an architecture that can be trained from scratch; an exported program has no initialisation"
        )
    started = time.perf_counter()
    device = resolve_device(device if device is not None else "auto")
    with full_float32(device):  # TF32 would move the solve, and CUDA's edit away from the CPU's
        clock, report = PhaseClock(device), _Progress(progress or _ignore_progress, spec.retrain is not None)
        warnings: list[str] = []
        reset_peak_memory(device)
        # devices.tensor_device is looked up at each call: the CPU tests replace it with their CUDA double's
        original = copy.deepcopy(model).to(devices.tensor_device(device)).eval()
        check_inputs(original, spec, train_data, eval_data, validation_data, attack_data)

        plan = RequestPlan.of(spec.request, train_data)
        samples = draw_samples(spec, plan, len(train_data), carve_validation=validation_data is None)
        policy = step_policy(spec, plan, train_data, samples.validation, validation_data, original)
        if warning := carved_validation_warning(spec, validation_data):
            warnings.append(warning)
        edit = _within_memory(
            lambda attempt: _edit_weights(attempt, original, train_data, plan, samples, policy, loss_fn, report, clock),
            spec,
            device,
            warnings,
        )
        solve = edit.solution.solve
        if solve is not None and not solve.converged:
            warnings.append(
                f"the solver stopped after {solve.iterations} iterations at relative residual "
                f"{solve.relative_residual:.3g} (tolerance {spec.solver.tolerance:g}): the solved vector is "
                "approximate; raise solver.max_iterations for a tighter solve"
            )
        with clock("evaluation"):
            eval_plan, before, after = _evaluate(
                spec, original, edit.model, train_data, eval_data, attack_data, plan, report
            )
        retrained = None
        if spec.retrain is not None:
            with clock("retrain"):
                retrained = _retrain(spec, original, train_data, plan, eval_plan, report)

        result = EditResult(
            method=spec.method,
            request=spec.request.kind,
            selection=SelectionSummary(
                **edit.selection.summary(),
                criterion="all" if spec.method in USES_FULL_SELECTION else spec.selection.criterion,
                layers=[LayerSelection(**vars(layer)) for layer in edit.selection.layers],
            ),
            solver=_solver_summary(spec, edit.solution, edit.hessian),
            step=edit.step,
            metrics=Metrics(
                before=before.metrics, after=after.metrics, retrained=retrained.metrics if retrained else None
            ),
            class_accuracy=ClassAccuracy(
                data=before.by_class_data,
                before=before.by_class,
                after=after.by_class,
                retrained=retrained.by_class if retrained else None,
            ),
            timings=Timings(**clock.seconds, total_s=time.perf_counter() - started),
            data=DataSummary(
                train_samples=len(train_data),
                affected_samples=len(plan.affected),
                hessian_samples=len(samples.hessian),
                gradient_samples=len(samples.gradient),
                coefficient=plan.coefficient,
                device=str(device),
            ),
            device=DeviceReport(**device_report(device)),
            warnings=warnings,
        )
        state = {k: v.detach().cpu().clone() for k, v in edit.model.state_dict().items()}
        return EditOutcome(state, result, edit.model)


def _solver_summary(spec: JobSpec, solution: InfluenceSolution, hessian: HessianOperator | None) -> SolverSummary:
    solve = solution.solve
    if solve is None:
        return SolverSummary(kind="none", iterations=0, hvp_count=0, relative_residual=0.0, converged=True, scale=1.0)
    return SolverSummary(
        kind=spec.solver.kind,
        iterations=solve.iterations,
        hvp_count=hessian.count if hessian else 0,
        relative_residual=solve.relative_residual,
        converged=solve.converged,
        scale=solve.scale,
        restarts=solve.restarts,
        lambda_max=solve.lambda_max,
        damping=spec.solver.damping,
        hvp_method=hessian.method if hessian else None,
        hvp_trial_seconds={name: s for name, s in hessian.trial_seconds.items()} if hessian else {},  # noqa: C416
        hvp_cached_batches=hessian.cached_batches if hessian else 0,
        hvp_seconds=hessian.seconds if hessian else 0.0,
        residual_history=solve.history[-200:],
    )
