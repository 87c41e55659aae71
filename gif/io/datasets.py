"""Dataset files: tensors (``.safetensors`` or ``.npz`` holding ``x``, ``y`` and optionally the examples' ``ids``)
read whole or summarised in bounded memory, and image folders or archives (``gif.io.images``) converted to them.

Ids name examples in the user's own terms: an integer tensor ``ids``, or (safetensors) a JSON list under the
metadata key ``ids``; class names may be given as a JSON list under the metadata key ``classes``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gif.data import Dataset, id_problems, stored_dataset, structure_problems, value_problems
from gif.errors import InvalidDatasetError, TooLargeError
from gif.io.files import (
    DeclaredSizeError,
    TensorFileError,
    read_safetensors_header,
    read_safetensors_tensor,
    read_tensors,
    scan_npz,
    scan_safetensors,
    sniff_format,
)
from gif.io.images import convert_images, image_archive_kind

DATASET_FORMATS = ("safetensors", "npz")


def _require_x_and_y(names: Iterable[str]) -> None:
    if not {"x", "y"} <= set(names) <= {"x", "y", "ids"}:
        raise InvalidDatasetError(
            f"the file must hold the tensors 'x' and 'y', and optionally 'ids' (found: {sorted(names)})"
        )


def _metadata_list(metadata: dict[str, str], key: str) -> list[Any] | None:
    if key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list):
        raise InvalidDatasetError(f"the metadata entry {key!r} must be a JSON list")
    return value


def _ids(tensor_ids: torch.Tensor | None, metadata: dict[str, str]) -> list[Any] | None:
    listed = _metadata_list(metadata, "ids")
    if tensor_ids is not None and listed is not None:
        raise InvalidDatasetError("give the ids once: as the tensor 'ids' or in the metadata, not both")
    if tensor_ids is None:
        return listed
    if tensor_ids.dim() != 1 or tensor_ids.is_floating_point() or tensor_ids.dtype == torch.bool:
        raise InvalidDatasetError("the tensor 'ids' must be one-dimensional integers")
    return [int(i) for i in tensor_ids.tolist()]


def _class_names(metadata: dict[str, str]) -> list[str] | None:
    names = _metadata_list(metadata, "classes")
    if names is not None and (not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        raise InvalidDatasetError("the metadata entry 'classes' must list distinct names")
    return names


def read_dataset(path: str | Path) -> Dataset:
    """A tensor file holding ``x`` and ``y`` (and ``ids``), or an image folder or archive converted to one; ``x`` is
    held as stored (uint8 images stay uint8: ``gif.data``)."""
    if image_archive_kind(path) is not None:
        with tempfile.TemporaryDirectory() as scratch:
            converted = Path(scratch) / "images.safetensors"
            convert_images(path, converted)
            return read_dataset(converted)
    try:
        tensors = read_tensors(path, DATASET_FORMATS)
        metadata = read_safetensors_header(path)[2] if sniff_format(path) == "safetensors" else {}
    except TensorFileError as exc:
        raise InvalidDatasetError(str(exc)) from None
    _require_x_and_y(tensors)
    return stored_dataset(tensors["x"], tensors["y"], _ids(tensors.get("ids"), metadata))


@dataclass(frozen=True)
class DatasetSummary:
    """What job checks need to know about a dataset, without its images."""

    num_samples: int
    num_classes: int
    sample_shape: list[int]
    class_counts: list[int]
    has_ids: bool = False
    class_names: list[str] | None = None

    @classmethod
    def of(cls, data: Dataset) -> DatasetSummary:
        """The engine's summary: its sample shape is what the model is fed, after its input transform."""
        counts = torch.bincount(data.y).tolist()
        return cls(len(data), data.num_classes, data.input_shape, counts, data.ids is not None)


def summarize_dataset(path: str | Path, max_bytes: int = 1 << 40) -> DatasetSummary:
    """Validate a dataset file as ``read_dataset`` does and summarise it.

    Only the labels (and ids) are loaded; ``x`` is checked for NaN/Inf in bounded chunks, so memory does not grow
    with the file. An ``.npz`` whose members declare more than ``max_bytes`` uncompressed, or expand like a
    decompression bomb, is refused (``TooLargeError``) before any of it is read.
    """
    metadata: dict[str, str] = {}
    try:
        fmt = sniff_format(path)
        if fmt not in DATASET_FORMATS:
            raise TensorFileError(f"{fmt} files are not datasets (accepted: {', '.join(DATASET_FORMATS)})")
        if fmt == "safetensors":
            infos = scan_safetensors(path)
            _require_x_and_y(infos)
            metadata = read_safetensors_header(path)[2]
            y = read_safetensors_tensor(path, "y")
            tensor_ids = read_safetensors_tensor(path, "ids") if "ids" in infos else None
        else:
            infos, whole = scan_npz(path, max_bytes, read_whole=("y", "ids"))
            _require_x_and_y(infos)
            y, tensor_ids = whole["y"], whole.get("ids")
    except DeclaredSizeError as exc:
        raise TooLargeError(str(exc)) from None
    except TensorFileError as exc:
        raise InvalidDatasetError(str(exc)) from None
    x = infos["x"]
    ids = _ids(tensor_ids, metadata)
    problems = structure_problems(x.shape, x.dtype, y) or value_problems(x.finite, y)
    if not problems and ids is not None:
        problems = id_problems(ids, len(y))
    if problems:
        raise InvalidDatasetError("invalid dataset", problems)
    y = y.long()
    counts = torch.bincount(y).tolist()
    return DatasetSummary(len(y), int(y.max()) + 1, list(x.shape[1:]), counts, ids is not None, _class_names(metadata))
