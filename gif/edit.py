"""One edit, end to end: plan → select → solve → step → apply → evaluate (→ retrain).

``run`` is the single entry point shared by the command line and the worker. It never touches
storage, queues or HTTP: progress and cancellation cross the boundary as one callback. Each phase
below is one function, timed by the job's ``PhaseClock`` (``gif.job``); the step policy lives in ``gif.step``,
the result's assembly in ``gif.summary``.

A job of several methods (spec ``methods``) is prepared once (the same samples, validation data and step policy),
then edited and measured once per method; the evaluation before the edit and retraining run once. The method whose
edited model scores the highest validation objective (the automatic step's) is the outcome; the others are reported
in ``result.comparison`` and their weights kept in ``EditOutcome.others``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
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
from gif.errors import InvalidSpecError, OutOfMemoryError
from gif.influence import InfluenceProblem, InfluenceSolution
from gif.io.files import sha256_file, write_safetensors
from gif.io.programs import read_program, write_program
from gif.job import EditJob, JobProgress, PhaseClock, ProgressSink, WeightEdit
from gif.membership import MAX_PER_SIDE, MembershipLosses, assess, not_judged
from gif.metrics import EvaluationPlan, Measurement, example_losses, measure, predict
from gif.models.transforms import InputTransform, apply_input_transform
from gif.parameters import ParameterSpace, ensure_finite
from gif.result import CheckpointInfo, Durability, EditResult, Membership, MethodComparison, Timings
from gif.selection import Selection, full_selection, select
from gif.spec import JobSpec, RemoveClass
from gif.step import AutoStepPolicy, carved_validation_warning
from gif.summary import edit_result
from gif.training import reinitialised, train
from gif.training_methods import every_parameter, policy_score, train_edit


@dataclass
class EditOutcome:
    """What ``run`` returns. The result is never changed in place: writing a file replaces it with a copy that
    records the file (``checkpoint`` or ``program``; a compared method's in its ``comparison`` entry)."""

    state_dict: dict[str, torch.Tensor]  # the edited checkpoint (parameters and buffers), on the CPU
    result: EditResult
    model: nn.Module  # the edited model
    # a job of several methods (spec methods): the edited checkpoints of the methods not chosen, on the CPU
    others: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """The methods whose checkpoint can be written: the chosen one first."""
        return [self.result.method, *self.others]

    def state_dict_of(self, method: str | None = None) -> dict[str, torch.Tensor]:
        """The edited checkpoint of a method the job ran (None: the chosen one)."""
        if method is None or method == self.result.method:
            return self.state_dict
        if method not in self.others:
            raise InvalidSpecError(f"the job did not run method {method} (it ran {', '.join(self.methods)})")
        return self.others[method]

    def write_checkpoint(self, path: str | Path, method: str | None = None) -> CheckpointInfo:
        """Write the edited weights (of ``method``; None: the chosen one's) as safetensors, atomically; the result
        records them as its ``checkpoint`` (a compared method's: in its comparison entry)."""
        name = method or self.result.method
        write_safetensors(
            path, self.state_dict_of(method), metadata={"gif_method": name, "gif_request": self.result.request}
        )
        return self._recorded("checkpoint", path, name)

    def write_program(self, original: str | Path, path: str | Path, method: str | None = None) -> CheckpointInfo:
        """Write the edited model (of ``method``; None: the chosen one's) as a ``.pt2`` program: the ``original``
        program (re-read by the validating loader) with the edited weights; the result records it as its
        ``program`` (a compared method's: in its comparison entry)."""
        state = self.state_dict_of(method)
        write_program(read_program(original), state, path)
        return self._recorded("program", path, method or self.result.method)

    def _recorded(self, field: str, path: str | Path, method: str) -> CheckpointInfo:
        written = CheckpointInfo(sha256=sha256_file(path), size_bytes=Path(path).stat().st_size)
        update: dict[str, Any] = {field: written} if method == self.result.method else {}
        if self.result.comparison is not None:
            update["comparison"] = [
                c.model_copy(update={field: written}) if c.method == method else c for c in self.result.comparison
            ]
        self.result = self.result.model_copy(update=update)
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
    ensure_finite(solution.delta, "the solved influence vector contains NaN or Inf")
    return solution, hessian


def _apply(model: nn.Module, space: ParameterSpace, new_theta: torch.Tensor, scale: float) -> nn.Module:
    """A copy of ``model`` with the flat parameters ``new_theta``; every buffer stays bit-identical."""
    ensure_finite(new_theta, f"the step {scale:g} makes the weights NaN or Inf")
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
            selection = every_parameter(
                job.original, job.train_data.inputs_at(slice(0, 1)).to(next(job.original.parameters()).device)
            )
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
    solver = job.spec.solver
    batch_size = solver.batch_size  # auto fits its batch to the cache, which the retry drops
    # the Hessian's uncached product; the Gauss-Newton products (eager or compiled) keep no graph between products
    product = "double_backward" if solver.curvature == "hessian" else solver.hvp
    solver = solver.model_copy(
        update={"batch_size": batch_size if batch_size == "auto" else max(1, batch_size // 2), "hvp": product}
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


def _measured(job: EditJob, model: nn.Module, eval_plan: EvaluationPlan) -> Measurement:
    try:
        return measure(model, eval_plan)
    except torch.OutOfMemoryError:
        device = next(job.original.parameters()).device
        raise OutOfMemoryError(f"the evaluation ran out of memory on {device}; lower evaluation.batch_size") from None


def _evaluate_before(job: EditJob) -> tuple[EvaluationPlan, Measurement]:
    """The measurements before the edit, and the plan they were measured on (every method, retraining reuse it)."""
    job.report("evaluation", 0.0)
    eval_plan = EvaluationPlan.for_job(job.spec, job.train_data, job.eval_data, job.attack_data, job.plan)
    before = _measured(job, job.original, eval_plan)
    job.report("evaluation", 0.5)
    return eval_plan, before


def _evaluate_after(job: EditJob, eval_plan: EvaluationPlan, edited: nn.Module) -> Measurement:
    after = _measured(job, edited, eval_plan)
    job.report("evaluation", 1.0)
    return after


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
        kept = example_losses(predict(model, kept_data, batch_size), kept_data.y)
        like_removed = (
            example_losses(predict(model, like_removed_data, batch_size), like_removed_data.y) if class_level else kept
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
    probes = probes_of(spec.durability, job.plan, train, lr, spec.solver.seed)
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
        shared = [warning] if (warning := carved_validation_warning(spec, validation_data)) else []
        methods = spec.compared
        measured: list[_MethodRun] = []
        eval_plan: EvaluationPlan | None = None
        before: Measurement | None = None
        for position, method in enumerate(methods):
            one = job if spec.methods is None else _for_method(job, method, position, len(methods), device)
            own_started = time.perf_counter()
            warnings = list(shared)
            edit = _within_memory(one, device, warnings)
            if eval_plan is None or before is None:  # once: the original model is the same for every method
                with job.clock("evaluation", accumulate=True):
                    eval_plan, before = _evaluate_before(one)
                own_started += job.clock.seconds["evaluation_s"]  # not this method's own cost
            with one.clock("evaluation", accumulate=True):
                after = _evaluate_after(one, eval_plan, edit.model)
                membership = _membership(one, before, after, edit.model)
                durability = _durability(one, edit.model, eval_plan, before, after)
            objective = _validation_objective(job, edit.model) if spec.methods is not None else None
            one_run = _MethodRun(
                one, edit, after, membership, durability, warnings, objective, time.perf_counter() - own_started
            )
            if spec.methods is not None:  # measured now: its edit (model, solve, graphs) need not be kept
                one_run.result = _method_result(one_run, before, None, device, input_transform)
                one_run.state = _cpu_state(edit.model)
            measured.append(one_run)
            _keep_only_the_best_edit(measured)
        assert eval_plan is not None and before is not None
        retrained = None
        if spec.retrain is not None:
            with job.clock("retrain"):
                retrained = _retrain(job, eval_plan)
        best = _best(measured)
        chosen = measured[best]
        assert chosen.edit is not None
        state = chosen.state if chosen.state is not None else _cpu_state(chosen.edit.model)
        result = _method_result(chosen, before, retrained, device, input_transform)
        if spec.methods is None:
            result = result.model_copy(
                update={"timings": Timings(**job.clock.seconds, total_s=time.perf_counter() - started)}
            )
            return EditOutcome(state, result, chosen.edit.model)
        seconds = {**chosen.job.clock.seconds}
        seconds["evaluation_s"] += job.clock.seconds.get("evaluation_s", 0.0)
        timings = Timings(
            **seconds, retrain_s=job.clock.seconds.get("retrain_s"), total_s=time.perf_counter() - started
        )
        comparison = [_compared(r, i == best) for i, r in enumerate(measured)]
        result = result.model_copy(
            update={"timings": timings, "comparison": comparison, "chosen_by": _chosen_by(job, comparison)}
        )
        others: dict[str, dict[str, torch.Tensor]] = {
            r.job.spec.method: r.state for i, r in enumerate(measured) if i != best and r.state is not None
        }
        return EditOutcome(state, result, chosen.edit.model, others)


@dataclass
class _MethodRun:
    """One method's edit of a job, measured; in a job of several methods also its validation ``objective``, its
    result (without the retrained reference) and its weights on the CPU."""

    job: EditJob
    edit: WeightEdit | None  # dropped (None) once a better method was found
    after: Measurement
    membership: Membership | None
    durability: Durability | None
    warnings: list[str]
    objective: float | None
    own_seconds: float
    result: EditResult | None = None
    state: dict[str, torch.Tensor] | None = None

    @property
    def rank(self) -> float:
        return self.objective if self.objective is not None and math.isfinite(self.objective) else -math.inf


def _validation_objective(job: EditJob, model: nn.Module) -> float:
    """The model's validation objective: what the automatic step maximises, on its data (the training methods
    keep their checkpoint by the same call); never the eval data."""
    assert isinstance(job.policy, AutoStepPolicy), "the spec refuses a fixed step for several methods"
    return policy_score(job.policy)(model)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _best(runs: list[_MethodRun]) -> int:
    """The highest validation objective; among equals the first in the order asked (a job of one method: it)."""
    return max(range(len(runs)), key=lambda i: (runs[i].rank, -i))


def _keep_only_the_best_edit(runs: list[_MethodRun]) -> None:
    """A job of several methods: only the best method's edit so far stays (its model on the device, its solve); the
    others are measured and their weights on the CPU."""
    if runs[-1].job.spec.methods is None:
        return
    best = _best(runs)
    for i, r in enumerate(runs):
        if i != best:
            r.edit = None
    release_cached_memory(next(runs[-1].job.original.parameters()).device)


def _for_method(job: EditJob, method: str, position: int, count: int, device: torch.device) -> EditJob:
    """The job with ``method`` as its method: the same samples, validation data and step policy; its own clock, and
    progress on its share of the bar (``position`` of ``count``; retraining, once, keeps its own part)."""
    sink, with_retrain = job.report.sink, job.spec.retrain is not None
    span = 0.5 if with_retrain else 1.0

    def on_share(
        phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
    ) -> None:
        sink(phase, (position * span + fraction) / count, iteration, relative_residual)

    spec = job.spec.model_copy(update={"method": method})
    return replace(job, spec=spec, report=JobProgress(on_share, with_retrain), clock=PhaseClock(device))


def _method_result(
    run_: _MethodRun,
    before: Measurement,
    retrained: Measurement | None,
    device: torch.device,
    input_transform: InputTransform | dict[str, Any] | None,
) -> EditResult:
    """One method's full result, its timings its own."""
    assert run_.edit is not None
    result = edit_result(
        run_.job,
        run_.edit,
        before,
        run_.after,
        retrained,
        run_.membership,
        list(run_.warnings),
        run_.own_seconds,
        device,
    )
    if run_.durability is not None:
        extra = [] if run_.durability.holds else [run_.durability.verdict]
        result = result.model_copy(update={"durability": run_.durability, "warnings": result.warnings + extra})
    if input_transform is not None and result.data is not None:
        ran = InputTransform.model_validate(input_transform).describe()
        result = result.model_copy(update={"data": result.data.model_copy(update={"input_transform": ran})})
    return result


def _compared(run_: _MethodRun, chosen: bool) -> MethodComparison:
    result = run_.result
    assert result is not None
    membership = result.membership.model_copy(update={"histogram": None}) if result.membership else None
    return MethodComparison(
        method=result.method,
        objective=run_.objective if run_.rank > -math.inf else None,
        chosen=chosen,
        metrics=result.metrics.after,
        membership=membership,
        durability=result.durability,
        step=result.step.model_copy(update={"trace": []}),
        timings=result.timings,
        hessian_vector_products=result.solver.hvp_count,
        warnings=result.warnings,
    )


def _chosen_by(job: EditJob, comparison: list[MethodComparison]) -> str:
    policy = job.policy
    assert isinstance(policy, AutoStepPolicy), "the spec refuses a fixed step for several methods"
    where = "given" if policy.provided else "carved from the training data"
    scores = ", ".join(f"{c.method} {'–' if c.objective is None else f'{c.objective:.4g}'}" for c in comparison)
    chosen = next(c for c in comparison if c.chosen)
    unchanged = (
        "; it kept the unedited model (step 0): no method scored better than the original weights, which are returned"
        if chosen.step.scale == 0
        else ""
    )
    return (
        f"{chosen.method}: the highest validation objective of {len(comparison)} methods (the automatic step's "
        f"objective on the validation data {where}, never the eval data; the first asked among equals): {scores}"
        f"{unchanged}"
    )
