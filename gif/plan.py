"""A request resolved against the training data: which examples it affects, which it keeps, the new labels,
and the coefficient c of the gradient g (sign and scale conventions: ``gif.influence``).

Selection, the solve, the step, the metrics and retraining all read one ``RequestPlan``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gif.curvature import LossTerm
from gif.data import Dataset
from gif.spec import Relabel, RemoveClass, RemoveSamples


@dataclass(frozen=True)
class RequestPlan:
    """The request resolved against the training data."""

    affected: torch.Tensor  # indices of the removed / relabelled training examples
    retained: torch.Tensor  # every other index
    new_labels: torch.Tensor | None  # relabel only, aligned with ``affected``
    coefficient: float  # c in the module docstring
    class_level: bool  # remove_class: affected examples stand for a whole class

    @classmethod
    def of(cls, request: RemoveClass | RemoveSamples | Relabel, train: Dataset) -> RequestPlan:
        n = len(train)
        if isinstance(request, RemoveClass):
            affected_mask = torch.isin(train.y, torch.tensor(request.classes))
        else:
            affected_mask = torch.zeros(n, dtype=torch.bool)
            affected_mask[torch.tensor(request.indices)] = True
        affected = torch.nonzero(affected_mask).flatten()
        retained = torch.nonzero(~affected_mask).flatten()
        new_labels = None
        if isinstance(request, Relabel):
            order = torch.tensor(request.indices).argsort()
            new_labels = torch.tensor(request.labels)[order]  # aligned with sorted ``affected``
            coefficient = len(affected) / n
        else:
            coefficient = len(affected) / len(retained)
        return cls(affected, retained, new_labels, coefficient, isinstance(request, RemoveClass))

    def gradient_terms(self, train: Dataset, sample: torch.Tensor) -> list[LossTerm]:
        """Loss terms whose gradient is g, on ``sample`` (a subset of ``affected``)."""
        weight = self.coefficient / len(sample)
        data = train.subset(sample)
        if self.new_labels is None:
            return [LossTerm(data, weight)]
        position = torch.searchsorted(self.affected, sample)
        return [LossTerm(data, weight), LossTerm(Dataset(data.x, self.new_labels[position]), -weight)]

    def edited_training_data(self, train: Dataset) -> Dataset:
        """The data a retrained model would see: the retained examples, or all of them relabelled."""
        if self.new_labels is None:
            return train.subset(self.retained)
        return train.relabelled(self.affected.tolist(), self.new_labels.tolist())
