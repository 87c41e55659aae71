"""The benchmarks' baselines do what their budgets say: they move the model, and gradient ascent keeps its best
checkpoint by the objective GIF's automatic step maximises."""

import pytest
import torch

from bench.baselines import fine_tune, gradient_ascent
from bench.setups import Prepared, Setup
from gif.data import load_digits, split_indices
from gif.metrics import accuracy, predict
from gif.models.registry import build_model
from gif.plan import RequestPlan, Samples
from gif.spec import JobSpec, RetrainSpec
from gif.step import step_policy
from gif.training import reinitialised, train

REMOVED = 8


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    data = load_digits()
    train_idx, test_idx = split_indices(len(data), 0.8, 0)
    recipe = RetrainSpec(epochs=20, batch_size=64, lr=0.05)
    architecture = {"name": "mlp", "config": {"sizes": [64, 32, 10]}}
    train_data, test = data.subset(train_idx), data.subset(test_idx)
    model = train(reinitialised(build_model(architecture), 0), train_data, recipe)
    return Prepared(Setup("digits", architecture, "digits", recipe), model, train_data, test, train_seconds=0.0)


def removal(seed: int = 0) -> JobSpec:
    return JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [REMOVED]}, "solver": {"seed": seed}})


def forget_accuracy(model: torch.nn.Module, prepared: Prepared) -> float:
    removed = prepared.test.y == REMOVED
    return accuracy(predict(model, prepared.test.x[removed]), prepared.test.y[removed])


def test_gradient_ascent_forgets_and_keeps_its_best_checkpoint_by_the_step_objective(prepared):
    spec = removal()
    before = {k: v.clone() for k, v in prepared.model.state_dict().items()}
    ascended = gradient_ascent(prepared, spec)

    assert all(torch.equal(v, prepared.model.state_dict()[k]) for k, v in before.items())  # the original is intact
    assert forget_accuracy(prepared.model, prepared) > 0.8
    assert forget_accuracy(ascended, prepared) < 0.5  # the budget moves the model
    plan = RequestPlan.of(spec.request, prepared.train)
    samples = Samples.draw(spec, plan, len(prepared.train), carve_validation=True)
    policy = step_policy(spec, plan, prepared.train, samples.validation, None, prepared.model)
    objective = policy.objective  # type: ignore[union-attr]
    data = policy.data  # type: ignore[union-attr]
    assert objective(data, lambda d: predict(ascended, d.x)) > objective(data, lambda d: predict(prepared.model, d.x))


def test_fine_tuning_trains_on_the_retained_data_only(prepared):
    tuned = fine_tune(prepared, removal(), seed=0)

    assert tuned is not prepared.model
    assert forget_accuracy(tuned, prepared) < forget_accuracy(prepared.model, prepared)
    kept = prepared.test.y != REMOVED
    assert accuracy(predict(tuned, prepared.test.x[kept]), prepared.test.y[kept]) > 0.85
