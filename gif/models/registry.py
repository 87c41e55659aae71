"""Server-side registry of architectures: users upload weights only, never code.

Each entry validates its config (pydantic), builds the module, and lists its parameters in
forward order (the order of ``model.parameters()``). Weight checking and loading: ``gif.models.checkpoints``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from gif.errors import UnknownArchitectureError
from gif.models import zoo
from gif.models.paper import MLP, VGG11, ImageClassifierConfig, MLPConfig, TinyNet, cifar_resnet18


class ArchitectureSpec(BaseModel):
    """A registry name plus its config, e.g. ``{"name": "tinynet", "config": {"in_channels": 1}}``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["tinynet"])
    config: dict[str, Any] = Field(default_factory=dict, examples=[{"in_channels": 1, "num_classes": 10}])


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    config_model: type[BaseModel]
    builder: Callable[[Any], nn.Module]
    family: str = "paper"  # paper (the four of the paper's experiments) | torchvision | timm
    check: Callable[[Any], str | None] | None = None  # why a valid-looking config cannot build, or None

    def config_schema(self) -> dict[str, Any]:
        return _schema(self.config_model)


@cache
def _schema(config_model: type[BaseModel]) -> dict[str, Any]:
    return config_model.model_json_schema()


def _zoo_entry(family: str, model: str) -> Architecture:
    return Architecture(
        f"{family}.{model}",
        zoo.description(family, model),
        zoo.ZooConfig,
        partial(zoo.build, family, model),
        family,
        partial(zoo.build_problem, family, model),
    )


REGISTRY: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "tinynet",
            "The paper's backdoor CNN: four 3×3 stride-2 convs with bias and ReLU (→32→64→128→256), "
            "flatten, Linear(1024, C). Inputs 28×28 or 32×32; 398,090 parameters for MNIST.",
            ImageClassifierConfig,
            lambda c: TinyNet(c.in_channels, c.num_classes),
        ),
        Architecture(
            "resnet18",
            "ResNet-18 with a 3×3 stride-1 stem and no max-pool (the paper's MNIST/CIFAR model), "
            "BasicBlocks [2,2,2,2], global average pooling, Linear(512, C); about 11.17 M parameters.",
            ImageClassifierConfig,
            cifar_resnet18,
        ),
        Architecture(
            "vgg11",
            "The paper's CIFAR VGG-11: 3×3 convs with bias + BatchNorm + ReLU, five max-pools, "
            "one Linear(512, C). Inputs 32×32; about 9.23 M parameters.",
            ImageClassifierConfig,
            lambda c: VGG11(c.in_channels, c.num_classes),
        ),
        Architecture(
            "mlp",
            "Input flattened, Linear layers of `sizes` [in, hidden…, out] with `activation` between them.",
            MLPConfig,
            lambda c: MLP(c.sizes, c.activation),
        ),
    )
}


REGISTRY.update({a.name: a for a in (_zoo_entry("torchvision", m) for m in sorted(zoo.model_names("torchvision")))})
LAZY_FAMILIES = ("timm",)  # thousands of names, and a package that takes seconds to import: entries made on demand


@lru_cache(maxsize=4096)
def lookup(name: str) -> Architecture | None:
    """The registry entry called ``name`` (``timm.<model>`` entries are made on first use), or None."""
    if name in REGISTRY:
        return REGISTRY[name]
    family, _, model = name.partition(".")
    if family in LAZY_FAMILIES and model in zoo.model_names(family):
        return _zoo_entry(family, model)
    return None


def architectures(family: str | None = None) -> list[Architecture]:
    """Every entry of ``family`` (of every family when None), the paper's first."""
    entries = [a for a in REGISTRY.values() if family is None or a.family == family]
    for lazy in LAZY_FAMILIES:
        if family in (None, lazy):
            entries += [a for a in (lookup(f"{lazy}.{m}") for m in sorted(zoo.model_names(lazy))) if a is not None]
    return entries


def resolve(spec: ArchitectureSpec | dict[str, Any]) -> tuple[Architecture, BaseModel]:
    """Look up the entry and validate its config; raise ``UnknownArchitectureError`` with every problem."""
    try:
        spec = spec if isinstance(spec, ArchitectureSpec) else ArchitectureSpec.model_validate(spec)
    except ValidationError as exc:
        raise UnknownArchitectureError("invalid architecture", _pydantic_problems(exc)) from None
    arch = lookup(spec.name)
    if arch is None:
        paper = ", ".join(sorted(n for n, a in REGISTRY.items() if a.family == "paper"))
        raise UnknownArchitectureError(
            f"unknown architecture {spec.name!r}; known: {paper}, torchvision.<model> and timm.<model> "
            "(GET /v1/architectures)"
        )
    try:
        config = arch.config_model.model_validate(spec.config)
    except ValidationError as exc:
        raise UnknownArchitectureError(f"invalid config for {spec.name!r}", _pydantic_problems(exc)) from None
    problem = arch.check(config) if arch.check is not None else None
    if problem is not None:
        raise UnknownArchitectureError(f"invalid config for {spec.name!r}", [problem])
    return arch, config


def _pydantic_problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()]


def num_classes(spec: ArchitectureSpec | dict[str, Any]) -> int:
    classes: int = resolve(spec)[1].num_classes  # type: ignore[attr-defined]
    return classes


def build_model(spec: ArchitectureSpec | dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    arch, config = resolve(spec)
    with torch.device(device):
        return arch.builder(config)


def parameter_listing(spec: ArchitectureSpec | dict[str, Any]) -> dict[str, Any]:
    """``{"parameters": [{"name", "shape"}], "num_parameters"}`` in forward order, without allocating weights."""
    model = build_model(spec, device="meta")
    params = [{"name": n, "shape": list(p.shape)} for n, p in model.named_parameters()]
    return {"parameters": params, "num_parameters": sum(p.numel() for p in model.parameters())}


EXPORTED = "exported"


def is_exported(spec: ArchitectureSpec | dict[str, Any] | None) -> bool:
    """Whether ``spec`` names an exported program (``{"name": "exported"}``), whose file is its own architecture."""
    name = spec.name if isinstance(spec, ArchitectureSpec) else (spec or {}).get("name")
    return name == EXPORTED
