"""The training methods (fine_tune, neg_grad_plus): they edit through the same plumbing as GIF (selection, evaluation,
the result, progress and cancel), with a validated budget, and keep the checkpoint the step's objective prefers."""

import math

import pytest
import torch
from pydantic import ValidationError

from gif.data import Dataset, split_indices
from gif.edit import run
from gif.errors import EditCancelled
from gif.models.registry import build_model
from gif.report import render_report
from gif.result import EditResult
from gif.spec import TRAINING_METHODS, JobSpec, RetrainSpec, TrainingMethodSpec
from gif.training import reinitialised, train
from gif.training_methods import (
    TRAINING_METHODS as REGISTERED,
)
from gif.training_methods import (
    TrainingData,
    checkpoint_steps,
    search_learning_rate,
)
from tests.support import units_moved

REMOVED = 8
QUICK = {"evaluation": {"retain_samples": 300}, "durability": {"int8": False}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_model(digits):
    """A float32 MLP (64→32→10) trained for 20 epochs on 80% of the digits, and the two splits."""
    train_idx, eval_idx = split_indices(len(digits), 0.8, 0)
    train_data, held_out = digits.subset(train_idx), digits.subset(eval_idx)
    model = reinitialised(build_model({"name": "mlp", "config": {"sizes": [64, 32, 10]}}), 0)
    return train(model, train_data, RetrainSpec(epochs=20, batch_size=64, lr=0.05)), train_data, held_out


def removal(method: str, **training) -> JobSpec:
    request = {"kind": "remove_class", "classes": [REMOVED]}
    return JobSpec.model_validate(
        {"request": request, "method": method, "training": {"epochs": 2, **training}, **QUICK}
    )


@pytest.mark.parametrize("method", ["fine_tune", "neg_grad_plus"])
def test_a_training_method_removes_a_class_and_reports_it_like_an_edit(digits_model, method):
    model, train_data, held_out = digits_model
    events: list = []
    outcome = run(removal(method), model, train_data, held_out, lambda *event: events.append(event))
    result = EditResult.model_validate_json(outcome.result.model_dump_json())  # the contract's shape, read back

    before, after = result.metrics.before, result.metrics.after
    assert before["forget_test_accuracy"] > 0.9 and after["forget_test_accuracy"] < 0.4
    assert after["test_accuracy"] > 0.85
    training = result.training
    assert result.method == method and training is not None
    assert training.learning_rate in (0.001, 0.01, 0.1) and training.step > 0
    assert training.objective == max(c.objective for c in training.candidates if c.objective is not None)
    assert training.objective > training.unedited_objective
    assert [c.learning_rate for c in training.candidates] == [0.001, 0.01, 0.1]
    assert all(c.steps == training.steps_per_candidate and c.stopped is None for c in training.candidates)
    assert result.step.mode == "auto" and result.step.scale == 1.0 and result.step.validation == "carved"
    assert result.step.evaluations == 1 + sum(c.checkpoints for c in training.candidates)
    solver = result.solver  # nothing is solved: no iterations, no products
    assert (solver.kind, solver.iterations, solver.hvp_count, solver.residual_history) == ("none", 0, 0, [])
    assert result.selection.criterion == "all" and result.selection.modification_ratio == 1.0
    assert result.data.hessian_samples == 0 and result.membership is not None and result.durability is not None
    assert result.timings.solve_s > 0 and result.timings.step_search_s > 0
    if method == "neg_grad_plus":
        assert (
            training.forget_samples == int((train_data.y == REMOVED).sum()) - result.step.validation_samples["affected"]
        )
        assert training.retain_samples == len(train_data) - result.data.affected_samples
    else:
        assert (
            training.forget_samples == 0 and training.retain_samples == len(train_data) - result.data.affected_samples
        )
    phases = [phase for phase, *_ in events]
    assert phases[0] == "selection" and phases.index("evaluation") > phases.index("step_search") > phases.index("solve")
    fractions = [fraction for _, fraction, *_ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert not all(torch.equal(outcome.state_dict[k], v) for k, v in model.state_dict().items())
    page = render_report(result, removal(method).model_dump(mode="json"))
    assert "Learning-rate search" in page and f"lr {training.learning_rate:g} (kept)" in page


@pytest.fixture(scope="module")
def mislabelled(digits_model):
    """The same MLP trained on the digits with 60 ones labelled 7, and those examples' positions."""
    _, train_data, _ = digits_model
    ones = torch.nonzero(train_data.y == 1).flatten()[:60].tolist()
    labels = train_data.y.clone()
    labels[ones] = 7
    data = Dataset(train_data.x, labels)
    model = reinitialised(build_model({"name": "mlp", "config": {"sizes": [64, 32, 10]}}), 0)
    return train(model, data, RetrainSpec(epochs=20, batch_size=64, lr=0.05)), data, ones


@pytest.mark.parametrize("method", ["fine_tune", "neg_grad_plus"])
def test_a_training_method_repairs_mislabelled_examples(mislabelled, method):
    model, data, ones = mislabelled
    request = {"kind": "relabel", "indices": ones, "labels": [1] * len(ones)}
    spec = JobSpec.model_validate({"request": request, "method": method, "training": {"epochs": 1}, **QUICK})
    result = run(spec, model, data).result
    before, after = result.metrics.before, result.metrics.after
    assert before["relabel_accuracy"] < 0.5 and after["relabel_accuracy"] > 0.9
    assert after["retain_accuracy"] > before["retain_accuracy"] - 0.05
    assert result.training.objective > result.training.unedited_objective
    assert result.membership is None  # nothing is removed


def test_with_selected_only_only_the_selected_units_move(digits_model):
    model, train_data, held_out = digits_model
    spec = removal("neg_grad_plus", selected_only=True).model_copy(update={"retrain": RetrainSpec(epochs=2)})
    events: list = []
    outcome = run(spec, model, train_data, held_out, lambda *event: events.append(event))
    result = outcome.result
    assert result.metrics.retrained is not None and result.timings.retrain_s is not None  # retraining works alike
    assert events[-1][:2] == ("retrain", 1.0)
    assert result.selection.criterion == "topk_outputs" and 0 < result.selection.modification_ratio < 0.2
    moved = units_moved(outcome.state_dict, model.state_dict())
    selected = {layer.module: layer.units_selected for layer in result.selection.layers}
    assert sum(len(rows) for rows in moved.values()) > 0
    assert all(len(rows) <= selected[name.rsplit(".", 1)[0]] for name, rows in moved.items())
    assert result.training.selected_only and result.data.gradient_samples > 0
    assert result.metrics.after["forget_test_accuracy"] < result.metrics.before["forget_test_accuracy"]


def test_the_search_keeps_the_best_candidate_and_a_learning_rate_that_blows_up_loses(digits_model):
    """An ascent at lr 1e6 overflows within a few steps; the search keeps a checkpoint of the sane rate, the one with
    the highest objective."""
    model, train_data, held_out = digits_model
    result = run(removal("neg_grad_plus", learning_rates=[1e6, 0.1], retain_weight=0.0), model, train_data).result
    wild, sane = result.training.candidates
    assert result.training.learning_rate == 0.1 and result.training.objective == sane.objective
    assert wild.stopped is not None or wild.objective is None or wild.objective < sane.objective
    assert math.isfinite(result.metrics.after["retain_accuracy"])


def test_the_unedited_model_is_a_candidate_and_wins_when_nothing_beats_it(digits_model):
    """Scored by closeness to the trained weights, every step loses: the original comes back, unchanged."""
    model, train_data, _ = digits_model
    original = torch.cat([p.detach().flatten() for p in model.parameters()])

    def closeness(m: torch.nn.Module) -> float:
        return -float((torch.cat([p.detach().flatten() for p in m.parameters()]) - original).norm())

    budget = TrainingMethodSpec(epochs=1, learning_rates=[0.01, 0.1])
    data = TrainingData([], train_data.subset(range(256)), 0.0, 1.0, budget.batch_size)
    search = search_learning_rate(model, data, budget, closeness)
    assert search.learning_rate is None and search.step == 0 and search.objective == 0.0
    assert all(torch.equal(a, b) for a, b in zip(search.model.state_dict().values(), model.state_dict().values()))
    assert [c.checkpoints for c in search.candidates] == [len(checkpoint_steps(4, 4, 4))] * 2


def test_a_job_whose_search_finds_nothing_better_returns_the_model_unchanged_and_says_so(digits_model):
    model, train_data, held_out = digits_model
    outcome = run(removal("fine_tune", epochs=1, learning_rates=[1e-12]), model, train_data, held_out)
    result = outcome.result
    assert result.training.learning_rate is None and result.training.step == 0 and result.step.scale == 0.0
    assert result.step.relative_change == 0.0
    assert all(torch.equal(outcome.state_dict[k], v) for k, v in model.state_dict().items())
    assert any("returned unchanged" in warning for warning in result.warnings)


def test_checkpoints_double_then_come_evenly_and_include_the_last_step():
    assert checkpoint_steps(10, 10, 4) == [1, 2, 4, 6, 8, 10]
    assert checkpoint_steps(14, 14, 4) == [1, 2, 3, 4, 6, 8, 9, 12, 14]
    assert checkpoint_steps(20, 10, 1) == [1, 2, 4, 8, 10, 16, 20]
    assert checkpoint_steps(3, 1, 4) == [1, 2, 3]


def test_a_cancelling_progress_sink_stops_the_training(digits_model):
    model, train_data, _ = digits_model
    seen: list = []

    def cancel_in_training(phase, fraction, iteration=None, residual=None):
        seen.append((phase, iteration))
        if phase == "solve" and iteration == 3:
            raise EditCancelled("cancelled on request")

    with pytest.raises(EditCancelled):
        run(removal("fine_tune"), model, train_data, progress=cancel_in_training)
    assert seen[-1] == ("solve", 3) and "evaluation" not in {phase for phase, _ in seen}


def test_the_registry_has_every_training_method_of_the_spec():
    assert set(REGISTERED) == set(TRAINING_METHODS)


@pytest.mark.parametrize(
    "training, fragment",
    [
        ({"learning_rates": []}, "at least 1 item"),
        ({"learning_rates": [0.1, -0.01]}, "greater than 0"),
        ({"learning_rates": [0.1, 0.1]}, "must not repeat"),
        ({"learning_rates": [float("nan")]}, "finite number"),
        ({"epochs": 0}, "greater than 0"),
        ({"retain_weight": 1.0}, "less than 1"),
        ({"momentum": 1.0}, "less than 1"),
        ({"batch_size": 0}, "greater than 0"),
        ({"learning_rate": 0.1}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_budget_is_refused(training, fragment):
    with pytest.raises(ValidationError, match=fragment):
        JobSpec.model_validate(
            {"request": {"kind": "remove_class", "classes": [1]}, "method": "fine_tune", "training": training}
        )


def test_a_training_method_refuses_a_fixed_step():
    with pytest.raises(ValidationError, match="leave step auto"):
        JobSpec.model_validate(
            {
                "request": {"kind": "remove_class", "classes": [1]},
                "method": "neg_grad_plus",
                "step": {"mode": "fixed", "scale": 1.0},
            }
        )


def test_training_data_counts_a_pass_over_what_it_learns_from():
    data = Dataset(torch.zeros(130, 2), torch.zeros(130, dtype=torch.long))
    assert TrainingData([], data, 0.0, 1.0, 64).steps_per_epoch == 3
    forget = [(data.subset(range(5)), -1.0)] * 2
    assert TrainingData(forget, data, 0.5, 0.5, 64).steps_per_epoch == 2
