"""Iterative solvers for least squares min ‖A x − b‖, i.e. the normal equations AᵀA x = Aᵀb.

Every solver stops on the *relative normal residual* ‖Aᵀb − AᵀA x‖ / ‖Aᵀb‖, reports it honestly
(recomputed from fresh products at the end, not taken from a recursion), and calls
``monitor(iteration, relative_residual)`` after every iteration; the monitor may raise to cancel.
Each iteration of each solver costs one product with A and one with Aᵀ (two Hessian-vector products).

- ``lsmr`` (Fong & Saunders 2011): MINRES on the normal equations, run on A and Aᵀ. Its normal residual
  never grows, and on the GIF systems it reaches the default tolerance in fewer iterations than CG
  (bench/RESULTS.md, section 8).
- ``cg``: conjugate gradients on AᵀA (CGLS); the residual oscillates.
- ``neumann``: the paper's series (Richardson iteration on AᵀA), kept for comparison.

Solvers are registered by name in ``SOLVERS`` and take a ``LeastSquares`` problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gif.errors import NonFiniteError
from gif.parameters import ensure_finite

MatVec = Callable[[torch.Tensor], torch.Tensor]
Monitor = Callable[[int, float], None]


@dataclass
class SolveResult:
    x: torch.Tensor
    iterations: int
    relative_residual: float
    converged: bool
    history: list[float] = field(default_factory=list)
    scale: float = 1.0  # Neumann's M (the series runs on N / M²); 1 for CG
    restarts: int = 0
    lambda_max: float | None = None


def _relative(r: torch.Tensor, b_norm: float) -> float:
    return float(r.norm()) / b_norm if b_norm > 0 else 0.0


def _no_monitor(iteration: int, residual: float) -> None:
    return None


@dataclass
class LeastSquares:
    """min ‖A x − b‖ given by its two operators (A: Rⁿ → Rᵐ and Aᵀ: Rᵐ → Rⁿ) and b ∈ Rᵐ."""

    apply: MatVec
    adjoint: MatVec
    b: torch.Tensor

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.apply(x))


def lsmr(
    problem: LeastSquares, tolerance: float, max_iterations: int, monitor: Monitor = _no_monitor, **_: object
) -> SolveResult:
    """LSMR (Fong & Saunders 2011, without local reorthogonalisation): Golub–Kahan bidiagonalisation of A,
    x_k minimising ‖Aᵀ(b − A x)‖ over the k-th Krylov space. The recurrence's ‖Aᵀr_k‖ drives the stopping
    test; the reported residual is recomputed from x at the end."""
    rhs = problem.adjoint(problem.b)  # Aᵀb
    normal_b = float(rhs.norm())
    if normal_b == 0.0:  # x = 0 is the solution
        return SolveResult(torch.zeros_like(rhs), 0, 0.0, True)
    beta = float(problem.b.norm())  # β₁u₁ = b, α₁v₁ = Aᵀu₁
    u, v, alpha = problem.b / beta, rhs / normal_b, normal_b / beta
    zetabar, alphabar, rho, rhobar, cbar, sbar = alpha * beta, alpha, 1.0, 1.0, 1.0, 0.0
    h, hbar, x = v.clone(), torch.zeros_like(v), torch.zeros_like(v)
    history: list[float] = []
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        u = problem.apply(v).sub_(u, alpha=alpha)
        beta = float(u.norm())
        if beta > 0:
            u /= beta
        v = problem.adjoint(u).sub_(v, alpha=beta)
        alpha = float(v.norm())
        if alpha > 0:
            v /= alpha
        rho_old, rho = rho, math.hypot(alphabar, beta)  # rotation eliminating β
        c, s = alphabar / rho, beta / rho
        theta_new, alphabar = s * alpha, c * alpha
        rhobar_old, thetabar = rhobar, sbar * rho  # rotation eliminating θ_new
        rhobar = math.hypot(cbar * rho, theta_new)
        cbar, sbar = cbar * rho / rhobar, theta_new / rhobar
        zeta, zetabar = cbar * zetabar, -sbar * zetabar
        hbar.mul_(-thetabar * rho / (rho_old * rhobar_old)).add_(h)  # in place: no fresh p-vectors per iteration
        x.add_(hbar, alpha=zeta / (rho * rhobar))
        h.mul_(-theta_new / rho).add_(v)
        history.append(abs(zetabar) / normal_b)
        monitor(iterations, history[-1])
        if history[-1] <= tolerance or alpha == 0.0 or beta == 0.0:
            break
    ensure_finite(x, "LSMR produced NaN or Inf")
    true_residual = _relative(rhs - problem.normal(x), normal_b)
    return SolveResult(x, iterations, true_residual, true_residual <= tolerance, history)


def conjugate_gradient(
    matvec: MatVec, b: torch.Tensor, tolerance: float, max_iterations: int, monitor: Monitor = _no_monitor, **_: object
) -> SolveResult:
    """CG on N x = b (CGLS when N = AᵀA): one N-product per iteration, plus one to verify the residual."""
    b_norm = float(b.norm())
    x = torch.zeros_like(b)
    if b_norm == 0.0:
        return SolveResult(x, 0, 0.0, True)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    history = []
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        Np = matvec(p)
        curvature = float(p @ Np)
        if not curvature > 0.0:  # p lies in N's null space (or the product broke): nothing left to gain
            iterations -= 1
            break
        alpha = rs / curvature
        x.add_(p, alpha=alpha)
        r.add_(Np, alpha=-alpha)
        rs_new = float(r @ r)
        history.append(rs_new**0.5 / b_norm)
        monitor(iterations, history[-1])
        if history[-1] <= tolerance:
            break
        p.mul_(rs_new / rs).add_(r)
        rs = rs_new
    ensure_finite(x, "conjugate gradients produced NaN or Inf")
    true_residual = _relative(b - matvec(x), b_norm)
    return SolveResult(x, iterations, true_residual, true_residual <= tolerance, history)


def power_iteration(matvec: MatVec, dim_like: torch.Tensor, iterations: int = 20, seed: int = 0) -> float:
    """Estimate λ_max of a PSD operator (a lower bound that tightens quickly)."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(dim_like.shape, generator=generator, dtype=dim_like.dtype).to(dim_like.device)
    v /= v.norm()
    estimate = 0.0
    for _ in range(iterations):
        w = matvec(v)
        estimate = float(v @ w)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0
        v = w / norm
    return estimate


def neumann(
    matvec: MatVec,
    b: torch.Tensor,
    tolerance: float,
    max_iterations: int,
    monitor: Monitor = _no_monitor,
    scale: float | None = None,
    power_iterations: int = 20,
    seed: int = 0,
    max_restarts: int = 30,
    growth_limit: float = 10.0,
) -> SolveResult:
    """The paper's series x_{t+1} = b/M² + x_t − N x_t / M² (eq. 22, i.e. Richardson iteration).

    It converges iff every eigenvalue of N/M² lies in (0, 2). M² is set to a power-iteration
    estimate of λ_max(N) unless ``scale`` (M) is given. When the residual grows past
    ``growth_limit`` × its best value or turns non-finite, the series restarts from its best
    iterate with M² four times larger; restarts are counted and reported.
    """
    b_norm = float(b.norm())
    x = torch.zeros_like(b)
    if b_norm == 0.0:
        return SolveResult(x, 0, 0.0, True)
    lambda_max = None
    if scale is None:
        lambda_max = power_iteration(matvec, b, power_iterations, seed)
        m_squared = lambda_max if lambda_max > 0 else 1.0
    else:
        m_squared = scale**2
    best_x, best = x.clone(), 1.0
    history: list[float] = []
    restarts = 0
    relative = 1.0
    for iteration in range(1, max_iterations + 1):
        try:
            r = b - matvec(x)
            relative = _relative(r, b_norm)
        except NonFiniteError:
            relative = float("inf")
        history.append(relative)
        monitor(iteration, relative)
        if not relative <= growth_limit * best:  # diverging (or NaN): rescale and restart
            if restarts == max_restarts:
                raise NonFiniteError(f"the Neumann series diverged {restarts} times; give a larger scale M")
            restarts += 1
            m_squared *= 4.0
            x = best_x.clone()
            continue
        if relative < best:
            best, best_x = relative, x.clone()
        if relative <= tolerance:
            break
        x.add_(r, alpha=1.0 / m_squared)
    return SolveResult(best_x, len(history), best, best <= tolerance, history, m_squared**0.5, restarts, lambda_max)


def _on_normal_equations(solver: Callable[..., SolveResult]) -> Callable[..., SolveResult]:
    """A solver of N x = c run on a least-squares problem's normal equations (N = AᵀA, c = Aᵀb)."""

    def solve(problem: LeastSquares, *args: object, **options: object) -> SolveResult:
        return solver(problem.normal, problem.adjoint(problem.b), *args, **options)

    return solve


SOLVERS: dict[str, Callable[..., SolveResult]] = {
    "lsmr": lsmr,
    "cg": _on_normal_equations(conjugate_gradient),
    "neumann": _on_normal_equations(neumann),
}
