"""Which parameters an edit may move (method.md §3): four criteria, registered by name.

The unit of selection is an output unit of a Conv2d or Linear module (a Linear row or a Conv
output channel, with its whole fan-in and its bias). Each layer gets a budget of
``round(ratio × its number of units)`` units, so every layer gives up the same share of its
parameters. BatchNorm/LayerNorm parameters are never selected. Every criterion is deterministic
for a given seed and analysed sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gif.instrumentation import unit_statistics
from gif.parameters import ParameterSpace, candidate_mask, qualified_name, target_modules
from gif.spec import SelectionSpec


@dataclass
class LayerSelection:
    module: str
    units_selected: int
    units_total: int
    parameters_selected: int


@dataclass
class Selection:
    mask: torch.Tensor  # flat bool over the whole parameter space
    layers: list[LayerSelection]
    num_candidates: int  # Conv/Linear parameter count

    @property
    def num_selected(self) -> int:
        return int(self.mask.sum())

    @property
    def modification_ratio(self) -> float:
        return self.num_selected / self.num_candidates

    def summary(self) -> dict:
        return {"num_selected": self.num_selected, "modification_ratio": self.modification_ratio}


# A criterion maps (per-unit output means, per-unit output-gradient means, budget, generator,
# spec) to the indices of the chosen units of one layer.
Criterion = Callable[[torch.Tensor, torch.Tensor | None, int, torch.Generator, SelectionSpec], torch.Tensor]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores; ties go to the lower index (stable)."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]


def _random(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)[:k]


def _measured(grads: torch.Tensor | None) -> torch.Tensor:
    """The output gradients, which ``unit_statistics`` measures when the criterion needs them."""
    assert grads is not None, "unit_statistics(..., with_gradients=True) was not asked for"
    return grads


def _threshold(outputs: torch.Tensor, _grads, k: int, generator: torch.Generator, spec: SelectionSpec) -> torch.Tensor:
    scores = outputs.abs()
    threshold = spec.threshold if spec.threshold is not None else float(scores.mean())
    eligible = torch.nonzero(scores > threshold).flatten()
    return eligible[_random(len(eligible), k, generator)]


CRITERIA: dict[str, Criterion] = {
    "topk_outputs": lambda outputs, _grads, k, _gen, _spec: _top(outputs.abs(), k),
    "topk_gradients": lambda _outputs, grads, k, _gen, _spec: _top(_measured(grads).abs(), k),
    "threshold": _threshold,
    "random": lambda outputs, _grads, k, gen, _spec: _random(len(outputs), k, gen),
}


def select(
    model: nn.Module,
    spec: SelectionSpec,
    analysed_batches: list[tuple[torch.Tensor, torch.Tensor, float]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Selection:
    """Run the analysed data through the hooked model and choose units layer by layer."""
    space = ParameterSpace.of(model)
    outputs, grads = unit_statistics(
        model, analysed_batches, loss_fn, with_gradients=spec.criterion == "topk_gradients"
    )
    choose = CRITERIA[spec.criterion]
    mask = torch.zeros(space.size, dtype=torch.bool)
    layers = []
    for layer_index, (name, module) in enumerate(target_modules(model).items()):
        if name not in outputs:  # its forward never ran: no statistics to choose units by
            continue
        units = module.weight.shape[0]
        budget = int(round(spec.ratio * units))
        generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + layer_index)
        chosen = choose(outputs[name], grads.get(name), budget, generator, spec).sort().values
        selected = 0
        for pname, param in module.named_parameters(recurse=False):
            flat = mask[space.slice_of(qualified_name(name, pname))].view(param.shape)
            flat[chosen] = True
            selected += int(flat[chosen].numel())
        layers.append(LayerSelection(name, len(chosen), units, selected))
    return Selection(mask, layers, int(candidate_mask(model, space).sum()))


def full_selection(model: nn.Module) -> Selection:
    """Every Conv/Linear parameter: the classic influence function's target set."""
    space = ParameterSpace.of(model)
    mask = candidate_mask(model, space)
    layers = [
        LayerSelection(name, m.weight.shape[0], m.weight.shape[0], sum(p.numel() for p in m.parameters(recurse=False)))
        for name, m in target_modules(model).items()
    ]
    return Selection(mask, layers, int(mask.sum()))
