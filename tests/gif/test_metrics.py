"""The metric keys of the public contract: which apply to which request, the data each is measured on, the MIA."""

import math

import pytest
import torch
from torch import nn

from gif.data import Dataset
from gif.metrics import METRIC_KEYS, EvaluationPlan, measure, metric_columns, mia_efficacy, removal_score
from gif.plan import RequestPlan
from gif.spec import JobSpec

CENTRES = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])


def clusters(n: int) -> Dataset:
    y = torch.arange(n) % 3
    return Dataset(CENTRES[y] + 0.1 * torch.randn(n, 2), y)


@pytest.fixture(scope="module")
def perfect() -> nn.Module:
    """Classifies the three clusters perfectly."""
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(CENTRES)
        model.bias.zero_()
    return model


def plan_for(request: dict, train: Dataset, eval_data: Dataset | None, **evaluation) -> EvaluationPlan:
    spec = JobSpec.model_validate({"request": request, "evaluation": evaluation})
    return EvaluationPlan.for_job(spec, train, eval_data, None, RequestPlan.of(spec.request, train))


def test_a_class_removal_is_measured_on_the_eval_data_split_by_class(perfect):
    train, eval_data = clusters(60), clusters(30)
    plan = plan_for({"kind": "remove_class", "classes": [2]}, train, eval_data, retain_samples=10)
    assert plan.removal and plan.class_level and set(plan.affected.y.tolist()) == {2} and len(plan.affected) == 20
    assert set(plan.eval_forgotten.y.tolist()) == {2} and len(plan.eval_kept) == 20 and 2 not in plan.eval_kept.y
    assert len(plan.retain) == 10 and 2 not in plan.retain.y
    again = plan_for({"kind": "remove_class", "classes": [2]}, train, eval_data, retain_samples=10)
    assert torch.equal(plan.retain.x, again.retain.x)  # seeded by the job
    measured = measure(perfect, plan)
    relabel_keys = {"relabel_accuracy", "attack_success_rate", "clean_accuracy", "heldout_attack_success_rate"}
    assert set(measured.metrics) == set(METRIC_KEYS) - relabel_keys
    assert measured.metrics["test_accuracy"] == measured.metrics["forget_test_accuracy"] == 1.0
    assert measured.metrics["score"] == 0.0  # the class is still recognised: nothing forgotten
    assert measured.by_class_data == "eval" and measured.by_class == {"0": 1.0, "1": 1.0, "2": 1.0}


def test_a_relabel_is_measured_on_the_new_labels_and_the_attack_target_defaults_to_the_common_old_label(perfect):
    train = clusters(30)  # labels 0, 1, 2, 0, 1, 2…
    request = {"kind": "relabel", "indices": [1, 4, 2, 3], "labels": [0, 0, 0, 0]}  # old labels 1, 1, 2, 0
    plan = plan_for(request, train, clusters(9))
    assert not plan.removal and plan.attack_target == 1
    metrics = measure(perfect, plan).metrics
    assert set(metrics) == {
        "test_accuracy",
        "test_loss",
        "retain_accuracy",
        "relabel_accuracy",
        "attack_success_rate",
        "clean_accuracy",
    }
    assert metrics["relabel_accuracy"] == 0.25  # only index 3 already had label 0
    assert metrics["attack_success_rate"] == 1.0  # the three examples whose label changes keep their old one


def test_without_eval_data_only_the_training_keys_are_measured(perfect):
    measured = measure(perfect, plan_for({"kind": "remove_samples", "indices": [0, 5]}, clusters(30), None))
    assert set(measured.metrics) == {"forget_accuracy", "retain_accuracy"} and measured.by_class_data == "retain"
    assert set(measured.metrics) <= set(METRIC_KEYS)


def test_the_membership_attack_calls_confident_examples_members():
    def confident(p: float, n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
        """n examples of label 0 whose softmax gives it probability p."""
        return torch.tensor([[math.log(p / (1 - p)), 0.0]]).repeat(n, 1), torch.zeros(n, dtype=torch.long)

    members, non_members = confident(0.99), confident(0.3)
    assert mia_efficacy(members, non_members, confident(0.98)) == 0.0
    assert mia_efficacy(members, non_members, confident(0.32)) == 1.0


def test_the_removal_score_and_the_metric_table():
    assert removal_score(1.0, 0.0) == 1.0 and removal_score(1.0, 1.0) == 0.0 and removal_score(0.5, 0.5) == 0.5
    columns, keys = metric_columns({"before": {"score": 0.1, "test_accuracy": 0.9}, "after": {"mia_efficacy": 0.5}})
    assert list(columns) == ["before", "after"] and keys == ["test_accuracy", "score", "mia_efficacy"]
