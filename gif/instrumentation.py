"""Model instrumentation: the only place where hooks are attached to modules.

``unit_statistics`` runs analysed data through the model and returns, for every Conv2d/Linear
module, the mean over batch (and space) of its raw output per output unit, and of the gradient of
an analysed loss with respect to that output. Hooks are removed on exit, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gif.parameters import target_modules


def _unit_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.Conv2d) else -1


def _sum_per_unit(t: torch.Tensor, axis: int) -> tuple[torch.Tensor, int]:
    """Sum over every axis but the unit axis, and how many values each unit's sum holds."""
    moved = t.movedim(axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    return flat.sum(0), flat.shape[0]


class _Accumulator:
    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, t: torch.Tensor, axis: int) -> None:
        s, n = _sum_per_unit(t.detach().double(), axis)
        self.total = s if self.total is None else self.total + s
        self.count += n

    def mean(self) -> torch.Tensor:
        assert self.total is not None, "the module never ran on the analysed data"
        return (self.total / self.count).float().cpu()


@contextmanager
def _hooks(model: nn.Module, with_gradients: bool) -> Iterator[tuple[dict, dict]]:
    outputs = {name: _Accumulator() for name in target_modules(model)}
    gradients = {name: _Accumulator() for name in target_modules(model)}
    handles = []

    def forward_hook(name: str, axis: int) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            outputs[name].add(output, axis)
            if with_gradients and output.requires_grad:
                output.register_hook(lambda g: gradients[name].add(g, axis))

        return hook

    for name, module in target_modules(model).items():
        handles.append(module.register_forward_hook(forward_hook(name, _unit_axis(module))))
    try:
        yield outputs, gradients
    finally:
        for handle in handles:
            handle.remove()


def unit_statistics(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor, float]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    with_gradients: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per module that ran: (mean output per unit, mean output-gradient per unit) over the analysed batches.

    A Conv2d/Linear module whose ``forward`` never runs (``nn.MultiheadAttention`` applies its ``out_proj``
    weight functionally) has no statistics and is left out.

    ``batches`` are ``(x, y, weight)``; the analysed loss is ``Σ weight · loss_fn(model(x), y)``.
    Gradient statistics are empty unless ``with_gradients``.
    """
    model.eval()
    with _hooks(model, with_gradients) as (outputs, gradients):
        for x, y, weight in batches:
            if with_gradients:
                with torch.enable_grad():
                    (weight * loss_fn(model(x), y)).backward()
            else:
                with torch.no_grad():
                    model(x)
    model.zero_grad(set_to_none=True)
    ran = [n for n, acc in outputs.items() if acc.total is not None]  # e.g. not MultiheadAttention.out_proj
    output_means = {n: outputs[n].mean() for n in ran}
    gradient_means = {n: gradients[n].mean() for n in ran if gradients[n].total is not None} if with_gradients else {}
    return output_means, gradient_means
