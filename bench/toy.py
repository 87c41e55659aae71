"""The paper's linear-regression toy (its Fig. 2), run through the engine's own code paths.

A linear model y = w·x on three correlated features; a group of examples is removed; only the
first two weights may move (J = {w₀, w₁}), w₂ stays frozen. For a quadratic loss every method is exact in its own sense:

- PIF keeps the J-part of the exact retrained update: the nearest point in Euclidean distance;
- FIF solves the sub-problem with the other weights frozen: the best retained loss within J;
- GIF solves the full optimality conditions in least squares: the smallest retained-loss gradient,
  i.e. the nearest point in the metric of the optimality conditions, ‖H (θ − θ*)‖.

``toy_edits`` returns all three edited weight vectors with the retrained optimum, so the claims
above are checked (tests) and plotted (bench), not asserted from memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gif.curvature import HessianOperator, LossTerm, ModelObjective, squared_error_sum
from gif.data import Dataset
from gif.influence import METHODS, InfluenceProblem
from gif.plan import RequestPlan
from gif.spec import RemoveSamples, SolverSpec


@dataclass
class ToyResult:
    original: torch.Tensor  # optimum on all data
    retrained: torch.Tensor  # optimum on the retained data
    edited: dict[str, torch.Tensor]  # method → weights after the edit (step 1)
    gradient_norm: dict[str, float]  # method → ‖∇R_retained‖ at the edited weights
    distance: dict[str, float]  # method → ‖θ_edited − θ*‖
    data: Dataset
    removed: torch.Tensor

    def retained(self) -> Dataset:
        removed = torch.zeros(len(self.data), dtype=torch.bool)
        removed[self.removed] = True
        return self.data.split(removed)[1]

    def retained_gradient_norm(self, w: torch.Tensor) -> float:
        """‖∇R_retained(w)‖ for the mean of ½(w·x − y)² over the retained examples."""
        kept = self.retained()
        return float((kept.x.T @ (kept.x @ w - kept.y) / len(kept)).norm())

    def retained_loss(self, w: torch.Tensor) -> float:
        kept = self.retained()
        return float(0.5 * ((kept.x @ w - kept.y) ** 2).mean())


def _least_squares(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    solution: torch.Tensor = torch.linalg.lstsq(x, y.unsqueeze(1)).solution
    return solution.squeeze(1)


def linear_regression_toy(
    n: int = 200, correlation: float = 0.6, removed_fraction: float = 0.2, noise: float = 0.1, seed: int = 0
) -> tuple[Dataset, torch.Tensor]:
    """Three correlated features; the removed group is the examples with the largest first feature,
    whose targets depend more on the frozen third feature, so removing them moves every weight."""
    g = torch.Generator().manual_seed(seed)
    cov = torch.full((3, 3), correlation, dtype=torch.float64).fill_diagonal_(1.0)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    y = x @ torch.tensor([1.0, -0.5, 0.5], dtype=torch.float64) + noise * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    removed = x[:, 0].argsort(descending=True)[: int(n * removed_fraction)].sort().values
    y[removed] += 1.5 * x[removed, 2]
    return Dataset(x, y), removed


def toy_edits(n: int = 200, seed: int = 0, methods: tuple[str, ...] = ("gif", "fif", "pif")) -> ToyResult:
    data, removed = linear_regression_toy(n=n, seed=seed)
    model = nn.Linear(3, 1, bias=False).double()
    original = _least_squares(data.x, data.y)
    with torch.no_grad():
        model.weight.copy_(original.unsqueeze(0))
    plan = RequestPlan.of(RemoveSamples(indices=removed.tolist()), data)
    retained = data.subset(plan.retained)
    retrained = _least_squares(retained.x, retained.y)

    hessian = HessianOperator(ModelObjective(model, [LossTerm(retained, 1.0 / len(retained))], squared_error_sum))
    g = ModelObjective(model, plan.gradient_terms(data, plan.affected), squared_error_sum).gradient()
    selected = torch.tensor([True, True, False])
    candidates = torch.tensor([True, True, True])
    spec = SolverSpec(tolerance=1e-12, max_iterations=100)

    result = ToyResult(original, retrained, {}, {}, {}, data, removed)
    for method in methods:
        delta = METHODS[method].solve(InfluenceProblem(hessian, g, selected, candidates, spec)).delta
        result.edited[method] = original + delta
        result.gradient_norm[method] = result.retained_gradient_norm(result.edited[method])
        result.distance[method] = float((result.edited[method] - retrained).norm())
    return result
