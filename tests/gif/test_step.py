"""The step policy: a fixed scale is taken as given; the automatic one searches s on validation data."""

import math

import pytest
import torch
from torch import nn

from gif.data import Dataset
from gif.plan import RequestPlan
from gif.spec import JobSpec
from gif.step import (
    MAX_EVALUATIONS,
    FixedStepPolicy,
    ValidationData,
    carved_validation_warning,
    sample_removal_objective,
    search_step,
    step_policy,
)


def never(*_):
    raise AssertionError("a fixed step evaluates nothing")


def test_a_fixed_step_is_the_given_scale_and_evaluates_nothing():
    spec = JobSpec.model_validate(
        {"request": {"kind": "remove_class", "classes": [1]}, "step": {"mode": "fixed", "scale": 2.5}}
    )
    data = Dataset(torch.zeros(6, 2), torch.arange(6) % 3)
    policy = step_policy(spec, RequestPlan.of(spec.request, data), data, torch.arange(3), None, nn.Linear(2, 3))
    assert policy == FixedStepPolicy(2.5)
    summary = policy.choose(never, 0.1, never)
    assert (summary.mode, summary.scale, summary.evaluations, summary.trace) == ("fixed", 2.5, None, [])


def test_the_search_finds_an_off_grid_optimum_in_its_budget():
    best_change, unit_change = 0.03, 0.5  # the optimum's relative change is not a grid point
    search = search_step(lambda s: -((math.log(s * unit_change / best_change)) ** 2) if s else -100.0, unit_change)
    assert search.trace[0] == (0.0, -100.0) and len(search.trace) == MAX_EVALUATIONS
    assert abs(math.log(search.scale * unit_change / best_change)) < 0.2
    assert search.relative_change == pytest.approx(search.scale * unit_change)
    assert (search.scale, search.objective) == max(search.trace, key=lambda t: t[1])


def test_no_edit_wins_when_every_step_is_worse_and_a_degenerate_direction_is_not_searched():
    assert search_step(lambda s: -s, 1.0).scale == 0.0
    for unit_change in (0.0, float("nan"), float("inf")):
        search = search_step(lambda s: 1.0, unit_change)
        assert (search.scale, search.relative_change, search.trace) == (0.0, 0.0, [])


@pytest.mark.parametrize("plateau", [None, 0.005])
def test_the_automatic_step_forgets_on_the_validation_data_and_moves_into_the_plateau(plateau):
    """A linear model that classifies three clusters perfectly; the direction lowers class 2's bias only, so the
    removal score reaches 1 once class 2 is never predicted, and stays there for every larger scale: without a
    plateau tolerance the search stops on the first such scale; with one, it moves to the geometric middle between
    that scale and the largest one searched."""
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(centres)
        model.bias.zero_()
    y = torch.arange(30) % 3
    train = Dataset(centres[y] + 0.1 * torch.randn(30, 2), y)
    validation = Dataset(centres[torch.arange(12) % 3], torch.arange(12) % 3)
    spec = JobSpec.model_validate(
        {"request": {"kind": "remove_class", "classes": [2]}, "step": {"mode": "auto", "plateau_tolerance": plateau}}
    )
    plan = RequestPlan.of(spec.request, train)
    policy = step_policy(spec, plan, train, torch.arange(0), validation, model)
    direction = {"weight": torch.zeros(3, 2), "bias": torch.tensor([0.0, 0.0, -1.0])}
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    reported: list[float] = []
    summary = policy.choose(lambda s: {n: theta[n] + s * direction[n] for n in theta}, 0.005, reported.append)
    assert summary.validation == "provided" and summary.validation_samples == {"affected": 4, "kept": 8}
    assert summary.objective == 1.0 and summary.evaluations == len(summary.trace) == len(reported)
    assert reported == sorted(reported) and 0 < reported[-1] <= 1
    logits = validation.x @ centres.T + direction["bias"] * summary.scale
    assert not (logits.argmax(1) == 2).any()
    first = min(scale for scale, value in summary.trace if value == 1.0)
    if plateau is None:
        assert summary.scale == first
    else:
        widest = max(scale for scale, value in summary.trace[:-1] if value == 1.0)
        assert summary.trace[-1][0] == summary.scale > first
        assert summary.scale == pytest.approx(math.sqrt(first * widest))


def test_a_sample_removal_step_that_costs_too_much_accuracy_is_refused():
    kept = Dataset(torch.zeros(2, 1), torch.tensor([0, 1]))
    removed = Dataset(torch.zeros(1, 1), torch.tensor([0]))
    val = ValidationData(removed, None, kept)
    objective = sample_removal_objective(target_loss=0.5, min_kept_accuracy=0.9)
    assert objective(val, lambda d: torch.tensor([[1.0, 0.0]] * len(d))) == -math.inf  # half the kept wrong
    right = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert objective(val, lambda d: right[: len(d)]) == pytest.approx(-abs(math.log1p(math.exp(-5.0)) - 0.5))


def test_only_a_sample_removal_on_a_carved_split_without_a_target_is_warned_about():
    def spec(request, **step):
        return JobSpec.model_validate({"request": request, "step": {"mode": "auto", **step}})

    samples = {"kind": "remove_samples", "indices": [1]}
    data = Dataset(torch.zeros(1, 1), torch.tensor([0]))
    assert "validation data" in carved_validation_warning(spec(samples), None)
    assert carved_validation_warning(spec(samples), data) is None
    assert carved_validation_warning(spec(samples, target_loss=0.3), None) is None
    assert carved_validation_warning(spec({"kind": "remove_class", "classes": [0]}), None) is None
