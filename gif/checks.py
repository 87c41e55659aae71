"""Whether a job fits its model and data: one check, from summaries alone, used by the engine and the API.

``job_fit_problems`` needs the model's output shape for one sample (or why the model cannot take such a
sample) and a ``DatasetSummary`` of each dataset: the engine measures both on the real tensors, the API
on the ``meta`` device and the summaries recorded at upload, so a job that cannot run is refused at
POST time in the same words the engine would use. Each problem names the part of the job it is about
(``request``, ``train_size``, ``train``, ``eval``, ``validation`` or ``attack``); the API turns that into a JSON
pointer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gif.data import Dataset
from gif.errors import InvalidSpecError
from gif.io.datasets import DatasetSummary
from gif.spec import JobSpec, Relabel, check_request

JobPart = Literal["request", "train_size", "train", "eval", "validation", "attack"]


@dataclass(frozen=True)
class FitProblem:
    part: JobPart
    detail: str


class JobMismatchError(InvalidSpecError):
    """The job does not fit its model and data; ``mismatches`` says where, problem by problem."""

    def __init__(self, mismatches: list[FitProblem]):
        super().__init__("the job does not fit its model and data", [m.detail for m in mismatches])
        self.mismatches = mismatches


def job_fit_problems(
    spec: JobSpec, output_shape: tuple[int, ...] | str, data: dict[JobPart, DatasetSummary]
) -> list[FitProblem]:
    """Every way the job fails to fit: ``output_shape`` is the model's output for one training sample, or the
    reason it could not take one; ``data`` holds the ``train`` summary and, when given, ``eval``, ``validation``
    and ``attack``."""
    train = data["train"]
    problems = []
    if isinstance(output_shape, str) or len(output_shape) != 2:
        reason = output_shape if isinstance(output_shape, str) else f"it returns shape {list(output_shape)}"
        problems.append(FitProblem("train", f"the model cannot take samples of shape {train.sample_shape}: {reason}"))
        return problems  # without logits, the class count is unknown
    num_classes = output_shape[1]
    try:
        check_request(spec.request, train.class_counts, num_classes, train.has_ids)
    except InvalidSpecError as exc:
        problems += [FitProblem("request", detail) for detail in exc.problems]
    if spec.train_size is not None and spec.train_size < train.num_samples:
        problems.append(
            FitProblem(
                "train_size",
                f"the model was trained on {spec.train_size} examples but the training data has more "
                f"({train.num_samples}): train_size counts the whole training set",
            )
        )
    if "attack" in data and not isinstance(spec.request, Relabel):
        problems.append(FitProblem("attack", "attack data measures a backdoor: it goes with relabel requests only"))
    for part in ("eval", "validation", "attack"):
        extra = data.get(part)
        if extra is None:
            continue
        if extra.sample_shape != train.sample_shape:
            problems.append(
                FitProblem(
                    part, f"{part} samples have shape {extra.sample_shape} but training samples {train.sample_shape}"
                )
            )
        if extra.num_classes > num_classes:
            problems.append(
                FitProblem(
                    part, f"the {part} data has label {extra.num_classes - 1} but the model has {num_classes} classes"
                )
            )
    return problems


def check_job_fit(spec: JobSpec, output_shape: tuple[int, ...] | str, data: dict[JobPart, DatasetSummary]) -> int:
    """Raise ``JobMismatchError`` listing every problem; otherwise return the model's class count."""
    problems = job_fit_problems(spec, output_shape, data)
    if problems:
        raise JobMismatchError(problems)
    assert not isinstance(output_shape, str)
    return output_shape[1]


def check_inputs(
    model: nn.Module,
    spec: JobSpec,
    train: Dataset,
    eval_data: Dataset | None = None,
    validation_data: Dataset | None = None,
    attack_data: Dataset | None = None,
) -> int:
    """Refuse what can be refused before any work (``gif.checks``: input shape, labels, request ranges); return the
    class count. The model's output shape is measured on one real training sample."""
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            output_shape: tuple[int, ...] | str = tuple(model.eval()(train.inputs_at(slice(0, 1)).to(device)).shape)
    except RuntimeError as exc:
        output_shape = str(exc).splitlines()[0]
    data: dict[JobPart, DatasetSummary] = {"train": DatasetSummary.of(train)}
    if eval_data is not None:
        data["eval"] = DatasetSummary.of(eval_data)
    if validation_data is not None:
        data["validation"] = DatasetSummary.of(validation_data)
    if attack_data is not None:
        data["attack"] = DatasetSummary.of(attack_data)
    return check_job_fit(spec, output_shape, data)
