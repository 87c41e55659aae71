"""The flat parameter space in which influence vectors live.

Every parameter of the model (BatchNorm included) has a place in one flat vector of length p,
in forward order. Conv2d and Linear weights and biases are the *candidates* that selection may
move; everything else keeps its offset but is never edited.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TARGET_MODULE_TYPES = (nn.Conv2d, nn.Linear)


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


def target_modules(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """The Conv2d and Linear modules, by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TARGET_MODULE_TYPES)}


def qualified_name(module_name: str, parameter_name: str) -> str:
    return f"{module_name}.{parameter_name}" if module_name else parameter_name


def candidate_mask(model: nn.Module, space: ParameterSpace) -> torch.Tensor:
    """Flat boolean mask of every Conv2d/Linear weight and bias (the parameters an edit may move)."""
    mask = torch.zeros(space.size, dtype=torch.bool)
    for module_name, module in target_modules(model).items():
        for pname, _ in module.named_parameters(recurse=False):
            mask[space.slice_of(qualified_name(module_name, pname))] = True
    return mask


def model_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def model_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach() for n, b in model.named_buffers()}
