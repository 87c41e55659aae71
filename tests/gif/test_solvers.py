import pytest
import torch

from gif.errors import EditCancelled
from gif.solvers import conjugate_gradient, neumann, power_iteration


def spd(n: int, condition: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize("solver", [conjugate_gradient, neumann])
def test_solvers_reach_the_dense_solution(solver):
    A = spd(40, 50.0)
    b = torch.randn(40, dtype=torch.float64)
    result = solver(lambda x: A @ x, b, tolerance=1e-10, max_iterations=20_000)
    assert result.converged and result.relative_residual <= 1e-10
    exact = torch.linalg.solve(A, b)
    assert torch.allclose(result.x, exact, rtol=1e-8, atol=1e-9)
    # the reported residual is the true one, not a recursion's estimate
    assert abs(result.relative_residual - float((b - A @ result.x).norm() / b.norm())) < 1e-12


def test_cg_needs_far_fewer_products_than_neumann():
    A = spd(60, 200.0)
    b = torch.randn(60, dtype=torch.float64)
    counted = {}
    for name, solver in (("cg", conjugate_gradient), ("neumann", neumann)):
        calls = []
        solver(lambda x: calls.append(1) or A @ x, b, tolerance=1e-6, max_iterations=50_000)
        counted[name] = len(calls)
    assert counted["cg"] * 5 <= counted["neumann"]


def test_unscaled_neumann_divergence_is_detected_and_recovered():
    A = spd(30, 10.0) * 40.0  # eigenvalues in [40, 400]: M = 1 diverges at once
    b = torch.randn(30, dtype=torch.float64)
    result = neumann(lambda x: A @ x, b, tolerance=1e-8, max_iterations=5000, scale=1.0)
    assert result.restarts >= 1 and result.converged
    assert result.scale**2 >= 200.0  # rescaled until λ_max / M² < 2
    assert torch.allclose(result.x, torch.linalg.solve(A, b), rtol=1e-6, atol=1e-9)
    assert max(result.history) > 10.0  # the growth really happened and was reported


def test_neumann_sets_its_scale_from_power_iteration():
    A = spd(30, 10.0) * 40.0
    estimate = power_iteration(lambda x: A @ x, torch.zeros(30, dtype=torch.float64), iterations=50)
    assert 0.9 * 400.0 <= estimate <= 400.0  # a lower bound that tightens
    result = neumann(lambda x: A @ x, torch.randn(30, dtype=torch.float64), tolerance=1e-8, max_iterations=5000)
    assert result.restarts == 0 and result.converged and 0.5 * 400.0 < result.lambda_max <= 400.0


def test_singular_consistent_systems_converge():
    B = torch.randn(20, 8, dtype=torch.float64)
    N = B @ B.T  # rank 8
    b = N @ torch.randn(20, dtype=torch.float64)
    for solver in (conjugate_gradient, neumann):
        result = solver(lambda x: N @ x, b, tolerance=1e-8, max_iterations=20_000)
        assert result.converged, solver.__name__


def test_zero_right_hand_side_and_cancellation():
    A = spd(10, 5.0)
    result = conjugate_gradient(lambda x: A @ x, torch.zeros(10, dtype=torch.float64), 1e-6, 10)
    assert result.iterations == 0 and result.converged and not result.x.any()

    def cancel(iteration, residual):
        if iteration == 3:
            raise EditCancelled("stop")

    for solver in (conjugate_gradient, neumann):
        with pytest.raises(EditCancelled):
            solver(lambda x: A @ x, torch.randn(10, dtype=torch.float64), 1e-12, 100, cancel)


def test_monitor_sees_every_iteration():
    A = spd(30, 100.0)
    seen = []
    result = conjugate_gradient(
        lambda x: A @ x, torch.randn(30, dtype=torch.float64), 1e-6, 100, lambda i, r: seen.append((i, r))
    )
    assert [i for i, _ in seen] == list(range(1, result.iterations + 1))
    assert seen[-1][1] <= 1e-6


def least_squares_problem(m: int, n: int, condition: float, seed: int = 0):
    """A tall A = Q diag(σ) Vᵀ with singular values spread over ``condition``, and a b it does not fit exactly."""
    from gif.solvers import LeastSquares

    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n, dtype=torch.float64)
    A = q @ torch.diag(sigma) @ v.T
    b = torch.randn(m, generator=g, dtype=torch.float64)
    products = []

    def apply(x):
        products.append("A")
        return A @ x

    def adjoint(u):
        products.append("At")
        return A.T @ u

    return A, b, LeastSquares(apply, adjoint, b), products


def test_lsmr_reaches_the_least_squares_solution_with_an_honest_residual():
    from gif.solvers import lsmr

    A, b, problem, products = least_squares_problem(80, 30, 100.0)
    result = lsmr(problem, tolerance=1e-10, max_iterations=500)
    exact = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
    assert result.converged and torch.allclose(result.x, exact, rtol=1e-7, atol=1e-9)
    normal = A.T @ b
    assert result.relative_residual == pytest.approx(float((normal - A.T @ (A @ result.x)).norm() / normal.norm()))
    assert len(products) == 2 * result.iterations + 3  # Aᵀb once, A and Aᵀ per iteration, A and Aᵀ to verify
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(result.history, result.history[1:]))


def test_lsmr_needs_fewer_products_than_cg_for_a_loose_tolerance():
    """The regime of GIF solves: an ill-conditioned normal system stopped at a few percent."""
    from gif.solvers import SOLVERS

    needed = {}
    for kind in ("lsmr", "cg"):
        A, b, problem, products = least_squares_problem(300, 120, 1e3, seed=1)
        seen = []
        SOLVERS[kind](problem, 0.02, 1000, lambda i, r: seen.append((len(products), r)))
        needed[kind] = next(count for count, residual in seen if residual <= 0.02)
    assert needed["lsmr"] < needed["cg"]


def test_lsmr_handles_a_zero_gradient_and_cancellation():
    from gif.solvers import LeastSquares, lsmr

    A = torch.randn(12, 5, dtype=torch.float64)
    zero = lsmr(LeastSquares(lambda x: A @ x, lambda u: A.T @ u, torch.zeros(12, dtype=torch.float64)), 1e-6, 10)
    assert zero.iterations == 0 and zero.converged and not zero.x.any() and zero.x.shape == (5,)

    def cancel(iteration, residual):
        if iteration == 2:
            raise EditCancelled("stop")

    with pytest.raises(EditCancelled):
        lsmr(LeastSquares(lambda x: A @ x, lambda u: A.T @ u, torch.randn(12, dtype=torch.float64)), 1e-14, 50, cancel)
