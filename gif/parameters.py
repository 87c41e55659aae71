"""The flat parameter space in which influence vectors live.

Every parameter of the model (BatchNorm included) has a place in one flat vector of length p,
in the order of ``model.named_parameters()``. The weights and biases of the model's layers
(``gif.instrumentation``) are the *candidates* that selection may move; everything else keeps its
offset but is never edited.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from gif.errors import NonFiniteError
from gif.instrumentation import Layer


def ensure_finite(vector: torch.Tensor, detail: str) -> None:
    """Raise ``NonFiniteError(detail)`` where ``vector`` holds a NaN or an infinity. Its sum is non-finite whenever
    an element is, and takes one pass without a temporary: the element-wise test took ~35 ms on a ResNet-18's 11M
    parameters here, two thirds of a forward+backward, at every curvature product. Only a non-finite sum, which huge
    finite elements can also give, is tested element by element."""
    if not math.isfinite(float(vector.sum())) and not bool(torch.isfinite(vector).all()):
        raise NonFiniteError(detail)


@dataclass(frozen=True)
class ParameterSpace:
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]  # start of each parameter in the flat vector
    size: int

    @classmethod
    def of(cls, model: nn.Module) -> ParameterSpace:
        names, shapes, offsets, total = [], [], [], 0
        for name, param in model.named_parameters():
            names.append(name)
            shapes.append(param.shape)
            offsets.append(total)
            total += param.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), total)

    def shape_of(self, name: str) -> torch.Size:
        return self.shapes[self.names.index(name)]

    def slice_of(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.shapes[i].numel())

    def flatten(self, tensors: dict[str, torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        values = tensors.values() if isinstance(tensors, dict) else tensors
        return torch.cat([t.reshape(-1) for t in values])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views into ``flat``, one per parameter, with the parameters' shapes."""
        sizes = [s.numel() for s in self.shapes]
        return {n: chunk.view(s) for n, s, chunk in zip(self.names, self.shapes, flat.split(sizes))}

    def zeros(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.size, dtype=like.dtype, device=like.device)


def layer_mask(space: ParameterSpace, layers: Iterable[Layer]) -> torch.Tensor:
    """Flat boolean mask of every weight and bias of ``layers`` (the parameters an edit may move)."""
    mask = torch.zeros(space.size, dtype=torch.bool)
    for layer in layers:
        for name in layer.parameters:
            mask[space.slice_of(name)] = True
    return mask


def model_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def model_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach() for n, b in model.named_buffers()}
