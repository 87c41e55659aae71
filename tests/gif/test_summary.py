"""The EditResult assembled from a finished edit's parts: the solve as it ran, and its warnings."""

import torch

from gif.edit import run
from gif.influence import InfluenceSolution
from gif.spec import JobSpec
from gif.summary import solver_summary


def test_a_solve_stopped_early_is_reported_as_such(tanh_mlp, digits_double):
    spec = JobSpec.model_validate(
        {
            "request": {"kind": "remove_class", "classes": [3]},
            "solver": {"max_iterations": 1, "tolerance": 1e-6, "hessian_samples": 200, "gradient_samples": 50},
            "step": {"mode": "fixed", "scale": 1.0},
        }
    )
    result = run(spec, tanh_mlp, digits_double).result
    solver = result.solver
    assert solver.kind == "lsmr" and solver.curvature == "hessian" and solver.iterations == 1
    assert not solver.converged and solver.relative_residual > 1e-6
    assert solver.hvp_count >= 2 and solver.hvp_method in solver.hvp_trial_seconds
    assert solver.residual_history and solver.damping == spec.solver.damping
    assert any("stopped after 1 iterations" in warning for warning in result.warnings)


def test_an_edit_without_a_solve_reports_none():
    spec = JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [3]}, "method": "first_order"})
    summary = solver_summary(spec, InfluenceSolution(torch.zeros(3), torch.ones(3, dtype=torch.bool), None), None)
    assert (summary.kind, summary.hvp_count, summary.converged, summary.curvature) == ("none", 0, True, None)


def test_an_automatic_step_that_keeps_the_unedited_model_says_so(tanh_mlp, digits_double):
    """The removed examples' loss is already the step's target: every step moves it away, so the search keeps s = 0."""
    removed = list(range(0, 200, 4))
    with torch.no_grad():
        logits = tanh_mlp(digits_double.x[removed])
    own_loss = float(torch.nn.functional.cross_entropy(logits, digits_double.y[removed]))
    spec = JobSpec.model_validate(
        {
            "request": {"kind": "remove_samples", "indices": removed},
            "solver": {"hessian_samples": 200, "max_iterations": 3},
            "step": {"mode": "auto", "target_loss": own_loss},
        }
    )
    outcome = run(spec, tanh_mlp, digits_double)
    assert outcome.result.step.scale == 0.0
    assert all(torch.equal(outcome.state_dict[k], v) for k, v in tanh_mlp.state_dict().items())
    assert any("returned unchanged" in warning for warning in outcome.result.warnings)
