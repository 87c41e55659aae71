"""Checkpoints: weights read without unpickling, checked against an architecture key by key, loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gif.errors import InvalidWeightsError, TooLargeError, UnknownArchitectureError
from gif.io.files import (
    DeclaredSizeError,
    TensorFileError,
    TensorInfo,
    check_archive_sizes,
    read_tensors,
    scan_safetensors,
    sniff_format,
)
from gif.io.programs import load_program
from gif.models.registry import EXPORTED, ArchitectureSpec, build_model, is_exported

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
