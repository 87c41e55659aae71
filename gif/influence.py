"""Which linear system each method solves for each request, and the sign and scale conventions.

Notation: θ the trained weights (p entries), H = ∇²R(θ) the Hessian of the mean training loss on
the *retained* data (+ λI when damped), g the gradient defined by the request below, J the
selected parameters, C all Conv2d/Linear parameters.

The request defines g and its coefficient c (so that g already includes c; ``gif.plan.RequestPlan``):

- ``remove_class`` / ``remove_samples``: g = c · ∇ mean CE over the removed examples, with
  c = |removed| / |retained|. Removing them turns the objective into the mean over the retained
  data, whose gradient at θ is −g; one Newton step gives Δ = +H⁻¹ g (the paper writes ε = −1/n).
- ``relabel``: g = c · ∇[mean CE(x, y_old) − mean CE(x, y_new)] with c = |relabelled| / |train|,
  the gradient change of the objective when (x, y_old) is replaced by (x, y_new), negated.

In every case the solved vector Δ is the weight change that performs the edit, and the engine
applies θ_J ← θ_J + s·Δ_J. Moving along Δ raises the loss of removed examples (or of the old labels).

Methods (registered in ``METHODS``), each solving least squares A x ≈ b with A = (H + λI)[rows, cols]
(``gif.solvers``: LSMR, CG on the normal equations AᵀA x = Aᵀb, or the Neumann series; two
Hessian-vector products per iteration):

- ``gif``: rows = all p, cols = J: Δ_J = (H_Jᵀ H_J)⁻¹ H_Jᵀ g, every optimality condition kept.
- ``fif``: rows = cols = J: Δ_J = H_JJ⁻¹ g_J, the sub-network treated as if alone.
- ``if``:  rows = cols = C: Δ_C = H_CC⁻¹ g_C, the classic influence function over all Conv/Linear weights.
- ``pif``: the ``if`` solution with every entry outside J set to zero.
- ``first_order``: Δ_J = g_J, no curvature (the ablation that shows what the solve adds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gif.curvature import HessianOperator
from gif.solvers import SOLVERS, LeastSquares, Monitor, SolveResult
from gif.spec import SolverSpec


@dataclass
class InfluenceSolution:
    delta: torch.Tensor  # flat, zero outside the modified set
    modified: torch.Tensor  # flat bool: the parameters the edit may change
    solve: SolveResult | None


def least_squares(
    hessian: HessianOperator, g: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor
) -> LeastSquares:
    """A = (H + λI)[rows, cols] and b = g[rows] (``rows=None`` keeps all rows), with Aᵀ = (H u_rows)[cols]
    since H is symmetric; vectors in Rᵐ stay full-length with zeros outside ``rows``."""

    def restrict_rows(v: torch.Tensor) -> torch.Tensor:
        if rows is not None:
            v[~rows] = 0
        return v

    def apply(x: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(g)
        v[cols] = x
        return restrict_rows(hessian(v))

    def adjoint(u: torch.Tensor) -> torch.Tensor:
        return hessian(restrict_rows(u.clone()))[cols]

    return LeastSquares(apply, adjoint, restrict_rows(g.clone()))


Solve = Callable[
    [HessianOperator | None, torch.Tensor, torch.Tensor, torch.Tensor, SolverSpec, Monitor], InfluenceSolution
]
"""(hessian, g, selected, candidates, solver spec, monitor) → Δ; masks are flat booleans on g's device."""


def _solve(
    hessian: HessianOperator | None,
    g: torch.Tensor,
    rows: torch.Tensor | None,
    cols: torch.Tensor,
    spec: SolverSpec,
    monitor: Monitor,
) -> InfluenceSolution:
    assert hessian is not None, "a method that solves needs the Hessian (Method.uses_curvature)"
    options = {"scale": spec.neumann_scale, "seed": spec.seed} if spec.kind == "neumann" else {}
    problem = least_squares(hessian, g, rows, cols)
    result = SOLVERS[spec.kind](problem, spec.tolerance, spec.max_iterations, monitor, **options)
    delta = torch.zeros_like(g)
    delta[cols] = result.x
    return InfluenceSolution(delta, cols, result)


def _gif(
    hessian: HessianOperator | None,
    g: torch.Tensor,
    selected: torch.Tensor,
    candidates: torch.Tensor,
    spec: SolverSpec,
    monitor: Monitor,
) -> InfluenceSolution:
    return _solve(hessian, g, None, selected, spec, monitor)


def _fif(
    hessian: HessianOperator | None,
    g: torch.Tensor,
    selected: torch.Tensor,
    candidates: torch.Tensor,
    spec: SolverSpec,
    monitor: Monitor,
) -> InfluenceSolution:
    return _solve(hessian, g, selected, selected, spec, monitor)


def _if(
    hessian: HessianOperator | None,
    g: torch.Tensor,
    selected: torch.Tensor,
    candidates: torch.Tensor,
    spec: SolverSpec,
    monitor: Monitor,
) -> InfluenceSolution:
    return _solve(hessian, g, candidates, candidates, spec, monitor)


def _pif(
    hessian: HessianOperator | None,
    g: torch.Tensor,
    selected: torch.Tensor,
    candidates: torch.Tensor,
    spec: SolverSpec,
    monitor: Monitor,
) -> InfluenceSolution:
    full = _if(hessian, g, selected, candidates, spec, monitor)
    full.delta[~selected] = 0
    return InfluenceSolution(full.delta, selected, full.solve)


def _first_order(
    hessian: HessianOperator | None,
    g: torch.Tensor,
    selected: torch.Tensor,
    candidates: torch.Tensor,
    spec: SolverSpec,
    monitor: Monitor,
) -> InfluenceSolution:
    delta = torch.where(selected, g, torch.zeros_like(g))
    return InfluenceSolution(delta, selected, None)


@dataclass(frozen=True)
class Method:
    """One method of the module docstring: how it solves, whether it needs the Hessian, and whether it edits every
    Conv/Linear parameter (``if``: no selection) instead of the selected ones."""

    solve: Solve
    uses_curvature: bool = True
    full_selection: bool = False


METHODS: dict[str, Method] = {
    "gif": Method(_gif),
    "fif": Method(_fif),
    "pif": Method(_pif),
    "if": Method(_if, full_selection=True),
    "first_order": Method(_first_order, uses_curvature=False),
}
