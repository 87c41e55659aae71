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
    since H is symmetric; vectors in Rᵐ stay full-length with zeros outside ``rows``. The masks become indices
    once: indexing by a boolean mask finds its nonzeros again at every product (tens of milliseconds for a
    ResNet-18's 11M parameters on a CPU)."""
    col_index = cols.nonzero().squeeze(1)
    outside_rows = None if rows is None else ~rows

    def restrict_rows(v: torch.Tensor) -> torch.Tensor:
        return v if outside_rows is None else v.masked_fill_(outside_rows, 0)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return restrict_rows(hessian(torch.zeros_like(g).index_copy_(0, col_index, x)))

    def adjoint(u: torch.Tensor) -> torch.Tensor:
        return hessian(restrict_rows(u.clone())).index_select(0, col_index)

    return LeastSquares(apply, adjoint, restrict_rows(g.clone()))


def _quiet(iteration: int, residual: float) -> None:
    return None


@dataclass(frozen=True)
class InfluenceProblem:
    """What every method solves from: the Hessian (None for ``first_order``), g, and the flat boolean masks of the
    selected parameters J and the candidates C, on g's device; the solver's settings and its progress monitor."""

    hessian: HessianOperator | None
    g: torch.Tensor
    selected: torch.Tensor
    candidates: torch.Tensor
    spec: SolverSpec
    monitor: Monitor = _quiet


def _solve(problem: InfluenceProblem, rows: torch.Tensor | None, cols: torch.Tensor) -> InfluenceSolution:
    hessian, g, spec = problem.hessian, problem.g, problem.spec
    assert hessian is not None, "a method that solves needs the Hessian (Method.uses_curvature)"
    options = {"scale": spec.neumann_scale, "seed": spec.seed} if spec.kind == "neumann" else {}
    system = least_squares(hessian, g, rows, cols)
    result = SOLVERS[spec.kind](system, spec.tolerance, spec.max_iterations, problem.monitor, **options)
    delta = torch.zeros_like(g)
    delta[cols] = result.x
    return InfluenceSolution(delta, cols, result)


def _gif(problem: InfluenceProblem) -> InfluenceSolution:
    return _solve(problem, None, problem.selected)


def _fif(problem: InfluenceProblem) -> InfluenceSolution:
    return _solve(problem, problem.selected, problem.selected)


def _if(problem: InfluenceProblem) -> InfluenceSolution:
    return _solve(problem, problem.candidates, problem.candidates)


def _pif(problem: InfluenceProblem) -> InfluenceSolution:
    full = _if(problem)
    full.delta[~problem.selected] = 0
    return InfluenceSolution(full.delta, problem.selected, full.solve)


def _first_order(problem: InfluenceProblem) -> InfluenceSolution:
    delta = torch.where(problem.selected, problem.g, torch.zeros_like(problem.g))
    return InfluenceSolution(delta, problem.selected, None)


@dataclass(frozen=True)
class Method:
    """One method of the module docstring: how it solves, whether it needs the Hessian, and whether it edits every
    Conv/Linear parameter (``if``: no selection) instead of the selected ones."""

    solve: Callable[[InfluenceProblem], InfluenceSolution]
    uses_curvature: bool = True
    full_selection: bool = False


METHODS: dict[str, Method] = {
    "gif": Method(_gif),
    "fif": Method(_fif),
    "pif": Method(_pif),
    "if": Method(_if, full_selection=True),
    "first_order": Method(_first_order, uses_curvature=False),
}
