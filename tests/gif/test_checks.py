"""One check of a job against its model and data (gif.checks), shared by the engine and the API."""

import pytest
import torch

from gif.checks import FitProblem, JobMismatchError, check_inputs, job_fit_problems
from gif.data import Dataset
from gif.io.datasets import DatasetSummary
from gif.models.registry import build_model
from gif.spec import JobSpec


def test_every_problem_is_listed_with_the_part_of_the_job_it_is_about():
    spec = JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [12]}})
    train = DatasetSummary(30, 3, [4], [10, 10, 10])
    data = {
        "train": train,
        "eval": DatasetSummary(5, 5, [4], [1] * 5),
        "validation": DatasetSummary(5, 3, [2, 2], [2, 2, 1]),
    }
    assert job_fit_problems(spec, (1, 3), data) == [
        FitProblem("request", "class 12 is out of range (the model has 3 classes)"),
        FitProblem("eval", "the eval data has label 4 but the model has 3 classes"),
        FitProblem("validation", "validation samples have shape [2, 2] but training samples [4]"),
    ]
    assert job_fit_problems(spec, "mat1 and mat2 shapes cannot be multiplied", data) == [
        FitProblem("train", "the model cannot take samples of shape [4]: mat1 and mat2 shapes cannot be multiplied")
    ]


def test_train_size_counts_at_least_the_uploaded_training_data():
    request = {"kind": "remove_samples", "indices": [1]}
    data = {"train": DatasetSummary(30, 3, [4], [10, 10, 10])}
    assert job_fit_problems(JobSpec.model_validate({"request": request, "train_size": 30}), (1, 3), data) == []
    assert job_fit_problems(JobSpec.model_validate({"request": request, "train_size": 29}), (1, 3), data) == [
        FitProblem(
            "train_size",
            "the model was trained on 29 examples but the training data has more (30): train_size counts the whole "
            "training set",
        )
    ]


def test_the_engine_refuses_in_the_same_words_from_real_tensors():
    model = build_model({"name": "mlp", "config": {"sizes": [4, 3]}})
    generator = torch.Generator().manual_seed(0)
    train = Dataset(torch.randn(30, 4, generator=generator), torch.arange(30) % 3)
    eval_data = Dataset(torch.randn(5, 4, generator=generator), torch.arange(5))
    spec = JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [12]}})
    with pytest.raises(JobMismatchError) as raised:
        check_inputs(model, spec, train, eval_data)
    summaries = {"train": DatasetSummary.of(train), "eval": DatasetSummary.of(eval_data)}
    assert raised.value.mismatches == job_fit_problems(spec, (1, 3), summaries)
    assert [m.part for m in raised.value.mismatches] == ["request", "eval"]
