"""The job specification's check against the training data's metadata (no tensors: the API refuses at POST time)."""

import pytest
from pydantic import ValidationError

from gif.errors import InvalidSpecError
from gif.spec import JobSpec, Relabel, RemoveClass, RemoveSamples, SolverSpec, check_request


def test_every_problem_of_a_request_is_listed_at_once():
    with pytest.raises(InvalidSpecError) as refused:
        check_request(Relabel(indices=[1, 12], labels=[4, 5]), class_counts=[3, 3, 3, 0, 1], num_classes=4)
    assert refused.value.problems == [
        "the training data has label 4 but the model has 4 classes",
        "indices out of range for 10 training examples: [12]",
        "labels out of range for 4 classes: [4, 5]",
    ]


@pytest.mark.parametrize(
    "request_, fragment",
    [
        (RemoveClass(classes=[0, 1]), "every training example"),
        (RemoveSamples(indices=[0, 1, 2, 3, 4]), "every training example"),
    ],
)
def test_a_request_that_would_leave_no_training_data_is_refused(request_, fragment):
    with pytest.raises(InvalidSpecError, match=fragment):
        check_request(request_, class_counts=[2, 3, 0], num_classes=3)
    check_request(RemoveClass(classes=[1]), class_counts=[2, 3, 0], num_classes=3)  # what fits passes


def test_spec_level_refusals():
    from pydantic import ValidationError

    for bad in (
        {"request": {"kind": "remove_class", "classes": []}},
        {"request": {"kind": "remove_samples", "indices": [1, 1]}},
        {"request": {"kind": "relabel", "indices": [1, 2], "labels": [3]}},
        {"request": {"kind": "forget_everything"}},
        {"request": {"kind": "remove_class", "classes": [1]}, "solver": {"tolerance": 2}},
        {"request": {"kind": "remove_class", "classes": [1]}, "step": {"mode": "fixed"}},
        {"request": {"kind": "remove_class", "classes": [1]}, "selection": {"ratio": 0}},
        {"request": {"kind": "remove_class", "classes": [1]}, "solvr": {}},
    ):
        with pytest.raises(ValidationError):
            JobSpec.model_validate(bad)


def test_examples_are_named_by_indices_or_ids_exactly_once():
    assert RemoveSamples(ids=["a.png", 7]).count == 2 and Relabel(ids=["a"], labels=[1]).count == 1
    for bad in ({}, {"indices": [1], "ids": ["a"]}):
        with pytest.raises(ValidationError, match="exactly one"):
            RemoveSamples(**bad)
    with pytest.raises(ValidationError, match="must not repeat"):
        RemoveSamples(ids=[7, "7"])
    with pytest.raises(ValidationError, match="ids and labels must have the same length"):
        Relabel(ids=["a", "b"], labels=[1])
    with pytest.raises(InvalidSpecError, match="the request does not fit") as caught:
        check_request(RemoveSamples(ids=["a"]), class_counts=[2, 3], num_classes=2)
    assert caught.value.problems == ["the training data carries no ids: name the examples by their indices"]
    check_request(RemoveSamples(ids=["a"]), class_counts=[2, 3], num_classes=2, has_ids=True)
    with pytest.raises(InvalidSpecError):
        check_request(RemoveSamples(ids=list("abcde")), class_counts=[2, 3], num_classes=2, has_ids=True)


def test_the_gauss_newton_curvature_takes_its_eager_or_compiled_product():
    for hvp in ("auto", "compiled"):
        assert SolverSpec(curvature="gauss_newton", hvp=hvp).hvp == hvp
    with pytest.raises(ValidationError, match="leave it auto or compiled"):
        SolverSpec(curvature="gauss_newton", hvp="cached_double_backward")


def test_a_relabel_selects_by_output_gradients_unless_the_job_names_a_criterion():
    relabel = {"kind": "relabel", "indices": [1, 2], "labels": [0, 0]}
    chosen = JobSpec.model_validate({"request": relabel, "selection": {"seed": 3}})
    assert chosen.selection.criterion == "topk_gradients"
    assert JobSpec.model_validate(chosen.model_dump()).selection.criterion == "topk_gradients"  # a stored spec
    named = JobSpec.model_validate({"request": relabel, "selection": {"criterion": "topk_outputs"}})
    assert named.selection.criterion == "topk_outputs"
    removal = JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [1]}})
    assert removal.selection.criterion == "topk_outputs"
