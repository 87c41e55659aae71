"""Which parameters an edit may move (method.md §3): four criteria, registered by name.

The unit of selection is an output unit of a layer (``gif.instrumentation``: a Linear row, a
convolution's output channel, a row of an attention input projection, with its whole fan-in and its
bias). Each layer gets a budget of ``round(ratio × its number of units)`` units, so every layer gives
up the same share of its parameters. Normalisation parameters and embeddings are never selected.
Every criterion is deterministic for a given seed and analysed sample, and the same on every device: random
draws come from a CPU generator seeded by the spec, and rankings use scores rounded well above float32 noise,
ties going to the lower unit index (``ranking_scores``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gif.instrumentation import find_layers, unit_statistics
from gif.parameters import ParameterSpace, layer_mask
from gif.result import LayerSelection
from gif.spec import SelectionSpec


@dataclass
class Selection:
    mask: torch.Tensor  # flat bool over the whole parameter space
    layers: list[LayerSelection]
    candidates: torch.Tensor  # flat bool: every parameter of every layer

    @property
    def num_candidates(self) -> int:
        return int(self.candidates.sum())

    @property
    def num_selected(self) -> int:
        return int(self.mask.sum())

    @property
    def modification_ratio(self) -> float:
        return self.num_selected / self.num_candidates

    def summary(self) -> dict[str, Any]:
        return {"num_selected": self.num_selected, "modification_ratio": self.modification_ratio}


# A criterion maps (per-unit output means, per-unit output-gradient means, budget, generator,
# spec) to the indices of the chosen units of one layer.
Criterion = Callable[[torch.Tensor, torch.Tensor | None, int, torch.Generator, SelectionSpec], torch.Tensor]


# A layer's scores are compared on a grid of this share of its largest score: 1,000 times coarser than their float32
# rounding (about 1e-7 of the largest score, measured on TinyNet/MNIST against float64; devices round differently:
# other kernels, other summation orders), fine enough that only units the criterion can hardly tell apart tie.
# TF32 convolutions (CUDA's default; about 2e-4 of the largest score) are beyond it: edits that must agree across
# devices compute in full float32.
SCORE_RESOLUTION = 1e-4


def ranking_scores(scores: torch.Tensor) -> torch.Tensor:
    """Per-unit scores as the criteria compare them: in float64 on the CPU, rounded to ``SCORE_RESOLUTION`` × the
    layer's largest score, so that scores equal but for float rounding (duplicated units, the same values summed in
    another order on another device) tie, and the lower unit index wins.

    The grid is relative to the layer's largest score, not to each score, because rounding errs by a share of what
    the layer's sums add up, not of each unit's own mean: the tiny scores of nearly dead units are noise, and all
    round to 0. No grid can keep two distinct scores within rounding noise of a grid line on one side of it on
    every device; the criteria's ranks are stable up to that."""
    scores = scores.detach().to("cpu", torch.float64)
    largest = float(scores.max()) if len(scores) else 0.0
    if not 0.0 < largest < math.inf:
        return torch.zeros_like(scores)
    return torch.round(scores / (SCORE_RESOLUTION * largest))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores; ties go to the lower index (a stable sort)."""
    return torch.sort(ranking_scores(scores), descending=True, stable=True).indices[:k]


def _random_among(eligible: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k of the ``eligible`` units (a bool per unit) drawn uniformly: the first k eligible in a seeded random order
    of all units, so that a unit entering or leaving the eligible set changes at most one choice."""
    order = torch.randperm(len(eligible), generator=generator)
    return order[eligible[order]][:k]


def _measured(grads: torch.Tensor | None) -> torch.Tensor:
    """The output gradients, which ``unit_statistics`` measures when the criterion needs them."""
    assert grads is not None, "unit_statistics(..., with_gradients=True) was not asked for"
    return grads


def _threshold(
    outputs: torch.Tensor, _grads: torch.Tensor | None, k: int, generator: torch.Generator, spec: SelectionSpec
) -> torch.Tensor:
    """Units whose |mean output| exceeds the threshold (rounded on the scores' grid, so that a score equal to it up
    to float rounding is not above it on one device only), k of them at random."""
    scores = outputs.detach().to("cpu", torch.float64).abs()
    threshold = spec.threshold if spec.threshold is not None else float(scores.mean())
    rounded = ranking_scores(torch.cat([scores, scores.new_tensor([threshold])]))
    return _random_among(rounded[:-1] > rounded[-1], k, generator)


def _random(
    outputs: torch.Tensor, _grads: torch.Tensor | None, k: int, generator: torch.Generator, _spec: SelectionSpec
) -> torch.Tensor:
    return _random_among(torch.ones(len(outputs), dtype=torch.bool), k, generator)


CRITERIA: dict[str, Criterion] = {
    "topk_outputs": lambda outputs, _grads, k, _gen, _spec: _top(outputs.abs(), k),
    "topk_gradients": lambda _outputs, grads, k, _gen, _spec: _top(_measured(grads).abs(), k),
    "threshold": _threshold,
    "random": _random,
}


def select(
    model: nn.Module,
    spec: SelectionSpec,
    analysed_batches: list[tuple[torch.Tensor, torch.Tensor, float]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Selection:
    """Run the analysed data through the watched model and choose units layer by layer."""
    space = ParameterSpace.of(model)
    layers, outputs, grads = unit_statistics(
        model, analysed_batches, loss_fn, with_gradients=spec.criterion == "topk_gradients"
    )
    choose = CRITERIA[spec.criterion]
    mask = torch.zeros(space.size, dtype=torch.bool)
    chosen_layers = []
    for layer_index, layer in enumerate(layers):
        budget = int(round(spec.ratio * layer.units))
        generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + layer_index)
        chosen = choose(outputs[layer.name], grads.get(layer.name), budget, generator, spec).sort().values
        selected = 0
        for name in layer.parameters:
            rows = mask[space.slice_of(name)].view(space.shape_of(name))
            rows[chosen] = True
            selected += int(rows[chosen].numel())
        chosen_layers.append(
            LayerSelection(
                module=layer.name, units_selected=len(chosen), units_total=layer.units, parameters_selected=selected
            )
        )
    return Selection(mask, chosen_layers, layer_mask(space, layers))


def full_selection(model: nn.Module, sample: torch.Tensor) -> Selection:
    """Every parameter of every layer (seen on ``sample``): the classic influence function's target set."""
    space = ParameterSpace.of(model)
    layers = find_layers(model, sample)
    mask = layer_mask(space, layers)
    summaries = [
        LayerSelection(
            module=layer.name,
            units_total=layer.units,
            units_selected=layer.units,
            parameters_selected=sum(space.shape_of(n).numel() for n in layer.parameters),
        )
        for layer in layers
    ]
    return Selection(mask, summaries, mask)
