"""The ``EditResult`` of a finished edit, assembled from its parts: what was selected, solved, stepped and measured."""

from __future__ import annotations

import torch

from gif.curvature import HessianOperator
from gif.devices import device_report
from gif.influence import InfluenceSolution
from gif.job import EditJob, WeightEdit
from gif.metrics import Measurement
from gif.result import (
    ClassAccuracy,
    DataSummary,
    DeviceReport,
    EditResult,
    Membership,
    Metrics,
    SelectionSummary,
    SolverSummary,
    Timings,
)
from gif.spec import JobSpec


def edit_result(
    job: EditJob,
    edit: WeightEdit,
    before: Measurement,
    after: Measurement,
    retrained: Measurement | None,
    membership: Membership | None,
    warnings: list[str],
    total_s: float,
    device: torch.device,
) -> EditResult:
    spec, solve = job.spec, edit.solution.solve
    if solve is not None and not solve.converged:
        warnings.append(
            f"the solver stopped after {solve.iterations} iterations at relative residual "
            f"{solve.relative_residual:.3g} (tolerance {spec.solver.tolerance:g}): the solved vector is "
            "approximate; raise solver.max_iterations for a tighter solve"
        )
    if membership is not None and membership.status != "not_distinguishable":
        warnings.append(membership.verdict)
    if edit.hessian is not None and edit.hessian.compile_warning is not None:
        warnings.append(edit.hessian.compile_warning)
    if edit.training is not None and edit.training.learning_rate is None:
        warnings.append(
            f"no checkpoint of {spec.method} at learning rates {spec.training.learning_rates} scored better on the "
            "validation objective than the unedited model, which is returned unchanged; try other "
            "training.learning_rates or a larger training.epochs"
        )
    if edit.training is None and edit.step.mode == "auto" and edit.step.scale == 0:
        warnings.append(
            f"no step along {spec.method}'s direction scored better on the validation objective than the unedited "
            "model, which is returned unchanged; try another method (methods), a larger selection.ratio, or "
            "validation data the model did not train on"
        )
    selected_only = spec.training.selected_only
    if job.trains:
        criterion = spec.selection.criterion if selected_only else "all"
    else:
        criterion = "all" if job.method.full_selection else spec.selection.criterion
    return EditResult(
        method=spec.method,
        request=spec.request.kind,
        selection=SelectionSummary(
            **edit.selection.summary(),
            criterion=criterion,
            layers=edit.selection.layers,
        ),
        solver=solver_summary(spec, edit.solution, edit.hessian),
        step=edit.step,
        metrics=Metrics(before=before.metrics, after=after.metrics, retrained=retrained.metrics if retrained else None),
        class_accuracy=ClassAccuracy(
            data=before.by_class_data,
            before=before.by_class,
            after=after.by_class,
            retrained=retrained.by_class if retrained else None,
        ),
        timings=Timings(**job.clock.seconds, total_s=total_s),
        data=DataSummary(
            train_samples=len(job.train_data),
            train_size=job.spec.train_size,
            affected_samples=len(job.plan.affected),
            hessian_samples=0 if job.trains else len(job.samples.hessian),
            gradient_samples=0 if job.trains and not selected_only else len(job.samples.gradient),
            coefficient=job.plan.coefficient,
            device=str(device),
        ),
        device=DeviceReport(**device_report(device)),
        membership=membership,
        training=edit.training,
        warnings=warnings,
    )


def solver_summary(spec: JobSpec, solution: InfluenceSolution, hessian: HessianOperator | None) -> SolverSummary:
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
        curvature=hessian.curvature if hessian else None,
        hvp_method=hessian.method if hessian else None,
        hvp_trial_seconds={name: s for name, s in hessian.trial_seconds.items()} if hessian else {},  # noqa: C416
        hvp_cached_batches=hessian.cached_batches if hessian else 0,
        batch_size=hessian.objective.batch_size if hessian else None,
        hvp_seconds=hessian.seconds if hessian else 0.0,
        hvp_compile_seconds=hessian.compile_seconds if hessian else 0.0,
        residual_history=solve.history[-200:],
    )
