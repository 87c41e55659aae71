"""Server-side registry of architectures: users upload weights only, never code.

Each entry validates its config (pydantic), builds the module, and lists its parameters in
forward order (the order of ``model.parameters()``). Weight loading checks every key, shape,
dtype and value and reports all problems at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from gif import zoo
from gif.errors import InvalidWeightsError, TooLargeError, UnknownArchitectureError
from gif.files import (
    DeclaredSizeError,
    TensorFileError,
    TensorInfo,
    check_archive_sizes,
    read_tensors,
    scan_safetensors,
    sniff_format,
)
from gif.programs import load_program


class ArchitectureSpec(BaseModel):
    """A registry name plus its config, e.g. ``{"name": "tinynet", "config": {"in_channels": 1}}``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["tinynet"])
    config: dict[str, Any] = Field(default_factory=dict, examples=[{"in_channels": 1, "num_classes": 10}])


class ImageClassifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    in_channels: int = Field(1, ge=1, le=64)
    num_classes: int = Field(10, ge=2, le=100_000)


class MLPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sizes: list[int] = Field(min_length=2, max_length=64, examples=[[64, 32, 10]])
    activation: Literal["relu", "tanh"] = "relu"

    @property
    def num_classes(self) -> int:
        return self.sizes[-1]

    @field_validator("sizes")
    @classmethod
    def _sizes_in_range(cls, sizes: list[int]) -> list[int]:
        if any(s < 1 or s > 1_000_000 for s in sizes):
            raise ValueError("every size must be between 1 and 1,000,000")
        if sizes[-1] < 2:
            raise ValueError("the last size (the number of classes) must be at least 2")
        return sizes


class TinyNet(nn.Module):
    """The paper's backdoor CNN: four 3×3 stride-2 convs (1→32→64→128→256) and Linear(1024, C)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(128, 256, 3, stride=2, padding=1)
        self.fc = nn.Linear(1024, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) initialisation: with PyTorch's default init this plain ReLU stack often sits on
        its initial loss plateau for whole epochs (and, with 10% poisoned labels, never leaves it)."""
        for layer in (self.conv1, self.conv2, self.conv3, self.conv4, self.fc):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        logits: torch.Tensor = self.fc(torch.flatten(x, 1))
        return logits


class VGG11(nn.Module):
    """The paper's CIFAR VGG-11: 3×3 convs with bias, BatchNorm and ReLU, five max-pools, Linear(512, C)."""

    LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in self.LAYOUT:
            if not isinstance(item, int):  # "M": a max-pool
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return logits


class MLP(nn.Module):
    """Flattened input, Linear layers of ``sizes`` with an activation between them, none after the last."""

    def __init__(self, sizes: list[int], activation: str):
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(act())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(torch.flatten(x, 1))
        return logits


def _resnet18(config: ImageClassifierConfig) -> nn.Module:
    """torchvision's ResNet-18 with the paper's 3×3 stride-1 stem and no max-pool (parameter names as torchvision's)."""
    from torchvision.models import resnet18

    model: nn.Module = resnet18(num_classes=config.num_classes)
    model.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


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
            _resnet18,
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


OPTIONAL_BUFFER_SUFFIX = "num_batches_tracked"


def expected_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint must hold: parameters and persistent buffers (BatchNorm statistics)."""
    return dict(model.state_dict())


def check_weights(model: nn.Module, tensors: dict[str, TensorInfo]) -> list[str]:
    """All the ways a checkpoint fails to fit ``model``: keys, shapes, dtypes, non-finite values."""
    expected = expected_tensors(model)
    problems = []
    missing = [k for k in expected if k not in tensors and not k.endswith(OPTIONAL_BUFFER_SUFFIX)]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    for name, info in tensors.items():
        ref = expected.get(name)
        if ref is None:
            continue
        if tuple(info.shape) != tuple(ref.shape):
            problems.append(f"{name}: shape {list(info.shape)} != expected {list(ref.shape)}")
        elif ref.is_floating_point() and not info.dtype.is_floating_point:
            problems.append(f"{name}: dtype {info.dtype} is not floating point")
        elif not info.finite:
            problems.append(f"{name}: contains NaN or Inf")
    return problems


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Load a checkpoint strictly into ``model`` (in place); raise ``InvalidWeightsError`` listing every problem."""
    problems = check_weights(model, {k: TensorInfo.of(v) for k, v in tensors.items()})
    if problems:
        raise InvalidWeightsError("the weights do not match the architecture", problems)
    own = expected_tensors(model)
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value.to(own[name].dtype))
    return model


WEIGHT_FORMATS = ("safetensors", "torch_zip")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file or torch zip state dict (``weights_only``); never a pickle."""
    try:
        return read_tensors(path, WEIGHT_FORMATS)
    except TensorFileError as exc:
        raise InvalidWeightsError(str(exc)) from None


def checkpoint_tensor_infos(path: str | Path, max_bytes: int = 1 << 40) -> dict[str, TensorInfo]:
    """Shape, dtype and finiteness of every tensor of a checkpoint file, for ``check_weights``.

    Safetensors are scanned in bounded chunks and torch zip files are memory-mapped, so memory
    does not grow with the checkpoint; a torch zip declaring more than ``max_bytes`` uncompressed (or
    expanding like a decompression bomb) is refused with ``TooLargeError`` before it is read.
    """
    try:
        if sniff_format(path) == "safetensors":
            return scan_safetensors(path)
        check_archive_sizes(path, max_bytes, "GIF_MAX_MODEL_BYTES")
    except DeclaredSizeError as exc:
        raise TooLargeError(str(exc)) from None
    except TensorFileError as exc:
        raise InvalidWeightsError(str(exc)) from None
    return {name: TensorInfo.of(value) for name, value in read_checkpoint(path).items()}


def load_checkpoint(spec: ArchitectureSpec | dict[str, Any], path: str | Path) -> nn.Module:
    """Build the architecture and load the checkpoint at ``path`` strictly; an ``exported`` program loads itself."""
    if is_exported(spec):
        return load_program(path)
    return load_weights(build_model(spec), read_checkpoint(path))


EXPORTED = "exported"


def is_exported(spec: ArchitectureSpec | dict[str, Any] | None) -> bool:
    """Whether ``spec`` names an exported program (``{"name": "exported"}``), whose file is its own architecture."""
    name = spec.name if isinstance(spec, ArchitectureSpec) else (spec or {}).get("name")
    return name == EXPORTED


def model_format(path: str | Path) -> str:
    """The format of a model file (``safetensors``, ``torch_zip`` or ``pt2``); ``InvalidWeightsError`` otherwise."""
    try:
        fmt = sniff_format(path)
    except TensorFileError as exc:
        raise InvalidWeightsError(str(exc)) from None
    if fmt not in (*WEIGHT_FORMATS, "pt2"):
        raise InvalidWeightsError(f"{fmt} files are not models (accepted: safetensors, torch zip state dicts, .pt2)")
    return fmt


def model_architecture(file_format: str, spec: ArchitectureSpec | dict[str, Any] | None) -> dict[str, Any]:
    """The architecture a model file of ``file_format`` is loaded with: ``spec``, or ``exported`` for a ``.pt2``
    program (whose own architecture any other ``spec`` would contradict); ``UnknownArchitectureError``."""
    if file_format == "pt2":
        if spec is not None and not is_exported(spec):
            raise UnknownArchitectureError(
                'a .pt2 program carries its own architecture: give none, or {"name": "exported"}'
            )
        return {"name": EXPORTED, "config": {}}
    if spec is None or is_exported(spec):
        raise UnknownArchitectureError("weights need their architecture (only a .pt2 program carries its own)")
    return spec.model_dump() if isinstance(spec, ArchitectureSpec) else dict(spec)
