"""Choosing the step s in θ_J ← θ_J + s·Δ_J on validation data (method.md §4).

The paper hand-picked s on test data; we search it on validation data only. Candidates are
spaced by the relative weight change they cause, r = ‖s·Δ_J‖ / ‖θ_J‖, on a log grid from 1e-4
to 1, then refined by golden-section search around the best grid point; s = 0 (no edit) is
always a candidate. The objective depends on the request (higher is better):

- ``remove_class``: the paper's score (eq. 32) from the accuracy on validation examples of the
  kept classes and on validation examples of the removed classes.
- ``relabel``: the harmonic mean of the affected examples' accuracy under their new labels and
  the accuracy on the other validation examples.
- ``remove_samples``: −|mean loss of the removed examples − target|, where the target is the mean
  loss of unseen data (the validation examples, unless a target is given); steps that cost more
  than ``max_retain_accuracy_drop`` of validation accuracy are refused. A retrained model still
  classifies most removed samples correctly, so driving their accuracy to zero is over-forgetting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from gif.data import Dataset
from gif.metrics import accuracy, mean_loss, removal_score

GRID_POINTS = 13
REFINE_STEPS = 6
MAX_EVALUATIONS = 1 + GRID_POINTS + REFINE_STEPS
MIN_RELATIVE_CHANGE = 1e-4
MAX_RELATIVE_CHANGE = 1.0


@dataclass(frozen=True)
class ValidationData:
    """What the step objective looks at: validation examples of the request and the rest."""

    affected: Dataset  # removed-class validation examples, or the affected samples themselves
    new_labels: torch.Tensor | None  # relabel: targets for ``affected``
    kept: Dataset  # validation examples unaffected by the request


Logits = Callable[[Dataset], torch.Tensor]


def class_removal_objective(val: ValidationData, logits: Logits) -> float:
    return removal_score(accuracy(logits(val.kept), val.kept.y), accuracy(logits(val.affected), val.affected.y))


def relabel_objective(val: ValidationData, logits: Logits) -> float:
    assert val.new_labels is not None
    relabelled = accuracy(logits(val.affected), val.new_labels)
    clean = accuracy(logits(val.kept), val.kept.y)
    return 2 * relabelled * clean / (relabelled + clean) if relabelled + clean > 0 else 0.0


def sample_removal_objective(target_loss: float, min_kept_accuracy: float) -> Callable[[ValidationData, Logits], float]:
    def objective(val: ValidationData, logits: Logits) -> float:
        if accuracy(logits(val.kept), val.kept.y) < min_kept_accuracy:
            return -math.inf
        return -abs(mean_loss(logits(val.affected), val.affected.y) - target_loss)

    return objective


@dataclass
class StepSearch:
    scale: float
    objective: float
    relative_change: float
    trace: list[tuple[float, float]] = field(default_factory=list)  # (scale, objective) in evaluation order


def search_step(objective_at: Callable[[float], float], unit_change: float) -> StepSearch:
    """Maximise ``objective_at(scale)``; ``unit_change`` = ‖Δ_J‖ / ‖θ_J‖ turns scales into relative changes."""
    trace: list[tuple[float, float]] = []

    def at_relative(r: float) -> float:
        scale = r / unit_change if r > 0 else 0.0
        value = objective_at(scale)
        trace.append((scale, value))
        return value

    if not unit_change > 0 or not math.isfinite(unit_change):
        return StepSearch(0.0, objective_at(0.0), 0.0, [])
    at_relative(0.0)
    logs = torch.linspace(math.log(MIN_RELATIVE_CHANGE), math.log(MAX_RELATIVE_CHANGE), GRID_POINTS).tolist()
    values = [at_relative(math.exp(lr)) for lr in logs]
    best = max(range(GRID_POINTS), key=lambda i: (values[i], -i))
    lo, hi = logs[max(best - 1, 0)], logs[min(best + 1, GRID_POINTS - 1)]
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = at_relative(math.exp(a)), at_relative(math.exp(b))
    for _ in range(REFINE_STEPS - 2):
        if fa >= fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = at_relative(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = at_relative(math.exp(b))
    scale, value = max(trace, key=lambda t: (t[1], -t[0]))
    return StepSearch(scale, value, scale * unit_change, trace)
