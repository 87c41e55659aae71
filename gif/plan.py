"""A request resolved against the training data: which examples it affects, which it keeps, the new labels,
and the coefficient c of the gradient g (sign and scale conventions: ``gif.influence``).

Selection, the solve, the step, the metrics and retraining all read one ``RequestPlan``; ``Samples`` are the seeded
index sets one job draws from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gif.curvature import LossTerm
from gif.data import Dataset, sample_indices, split_indices
from gif.spec import AutoStep, JobSpec, Relabel, RemoveClass, RemoveSamples

GRADIENT_SEED_OFFSET = 2
STEP_SEED_OFFSET = 1  # the validation split and its samples are seeded by solver.seed + this


@dataclass(frozen=True)
class RequestPlan:
    """The request resolved against the training data."""

    affected: torch.Tensor  # indices of the removed / relabelled training examples
    retained: torch.Tensor  # every other index
    new_labels: torch.Tensor | None  # relabel only, aligned with ``affected``
    coefficient: float  # c in the module docstring
    class_level: bool  # remove_class: affected examples stand for a whole class

    @classmethod
    def of(
        cls, request: RemoveClass | RemoveSamples | Relabel, train: Dataset, train_size: int | None = None
    ) -> RequestPlan:
        """``train_size``: the size of the whole training set when ``train`` is a sample of it holding every affected
        example (the coefficient c counts the whole set; JobSpec.train_size)."""
        n = len(train)
        if isinstance(request, RemoveClass):
            affected_mask = torch.isin(train.y, torch.tensor(request.classes))
        else:
            indices = request.indices if request.indices is not None else train.indices_of(request.ids or [])
            affected_mask = torch.zeros(n, dtype=torch.bool)
            affected_mask[torch.tensor(indices)] = True
        affected = torch.nonzero(affected_mask).flatten()
        retained = torch.nonzero(~affected_mask).flatten()
        whole = train_size if train_size is not None else n
        new_labels = None
        if isinstance(request, Relabel):
            order = torch.tensor(indices).argsort()
            new_labels = torch.tensor(request.labels)[order]  # aligned with sorted ``affected``
            coefficient = len(affected) / whole
        else:
            coefficient = len(affected) / (whole - len(affected))
        return cls(affected, retained, new_labels, coefficient, isinstance(request, RemoveClass))

    def gradient_terms(self, train: Dataset, sample: torch.Tensor) -> list[LossTerm]:
        """Loss terms whose gradient is g, on ``sample`` (a subset of ``affected``)."""
        weight = self.coefficient / len(sample)
        data = train.subset(sample)
        if self.new_labels is None:
            return [LossTerm(data, weight)]
        position = torch.searchsorted(self.affected, sample)
        return [LossTerm(data, weight), LossTerm(data.with_labels(self.new_labels[position]), -weight)]

    def edited_training_data(self, train: Dataset) -> Dataset:
        """The data a retrained model would see: the retained examples, or all of them relabelled."""
        if self.new_labels is None:
            return train.subset(self.retained)
        return train.relabelled(self.affected.tolist(), self.new_labels.tolist())


@dataclass(frozen=True)
class Samples:
    """The seeded index sets one job uses (all into the training data)."""

    validation: torch.Tensor  # carved validation split (empty when held-out data is given or the step is fixed)
    hessian: torch.Tensor  # retained examples in the Hessian sample
    gradient: torch.Tensor  # affected examples in the gradient (and selection) sample

    @classmethod
    def draw(cls, spec: JobSpec, plan: RequestPlan, num_train: int, carve_validation: bool) -> Samples:
        solver = spec.solver
        validation = torch.empty(0, dtype=torch.long)
        if carve_validation and isinstance(spec.step, AutoStep):
            validation = carved_validation_indices(spec.step, num_train, solver.seed)
        return cls(
            validation,
            sample_indices(plan.retained, solver.hessian_samples, solver.seed),
            sample_indices(
                gradient_pool(plan, validation), solver.gradient_samples, solver.seed + GRADIENT_SEED_OFFSET
            ),
        )


def carved_validation_indices(step: AutoStep, num_train: int, seed: int) -> torch.Tensor:
    """The seeded validation split the automatic step carves from the training data."""
    return split_indices(num_train, step.validation_fraction, seed + STEP_SEED_OFFSET)[0]


def gradient_pool(plan: RequestPlan, validation: torch.Tensor) -> torch.Tensor:
    """The affected examples an edit may learn from: for a class removal, those outside the carved ``validation``
    split, whose examples of the class the step objective keeps as held-out ones (all of them if none is outside)."""
    if plan.class_level and len(validation):
        outside = plan.affected[~torch.isin(plan.affected, validation)]
        return outside if len(outside) else plan.affected
    return plan.affected
