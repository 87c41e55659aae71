"""Dataset files (``.safetensors`` or ``.npz`` holding ``x`` and ``y``): read whole, or summarised in bounded memory."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from gif.data import Dataset, make_dataset, structure_problems, value_problems
from gif.errors import InvalidDatasetError, TooLargeError
from gif.io.files import (
    DeclaredSizeError,
    TensorFileError,
    read_safetensors_tensor,
    read_tensors,
    scan_npz,
    scan_safetensors,
    sniff_format,
)

DATASET_FORMATS = ("safetensors", "npz")


def _require_x_and_y(names: Iterable[str]) -> None:
    if set(names) != {"x", "y"}:
        raise InvalidDatasetError(f"the file must hold exactly the tensors 'x' and 'y' (found: {sorted(names)})")


def read_dataset(path: str | Path) -> Dataset:
    """A ``.safetensors`` or ``.npz`` file holding exactly ``x`` and ``y``."""
    try:
        tensors = read_tensors(path, DATASET_FORMATS)
    except TensorFileError as exc:
        raise InvalidDatasetError(str(exc)) from None
    _require_x_and_y(tensors)
    return make_dataset(tensors["x"], tensors["y"])


@dataclass(frozen=True)
class DatasetSummary:
    """What job checks need to know about a dataset, without its images."""

    num_samples: int
    num_classes: int
    sample_shape: list[int]
    class_counts: list[int]

    @classmethod
    def of(cls, data: Dataset) -> DatasetSummary:
        return cls(len(data), data.num_classes, data.sample_shape, torch.bincount(data.y).tolist())


def summarize_dataset(path: str | Path, max_bytes: int = 1 << 40) -> DatasetSummary:
    """Validate a dataset file as ``read_dataset`` does and summarise it.

    Only the labels are loaded; ``x`` is checked for NaN/Inf in bounded chunks, so memory does not grow
    with the file. An ``.npz`` whose members declare more than ``max_bytes`` uncompressed, or expand like a
    decompression bomb, is refused (``TooLargeError``) before any of it is read.
    """
    try:
        fmt = sniff_format(path)
        if fmt not in DATASET_FORMATS:
            raise TensorFileError(f"{fmt} files are not datasets (accepted: {', '.join(DATASET_FORMATS)})")
        if fmt == "safetensors":
            infos = scan_safetensors(path)
            _require_x_and_y(infos)
            y = read_safetensors_tensor(path, "y")
        else:
            infos, whole = scan_npz(path, max_bytes, read_whole=("y",))
            _require_x_and_y(infos)
            y = whole["y"]
    except DeclaredSizeError as exc:
        raise TooLargeError(str(exc)) from None
    except TensorFileError as exc:
        raise InvalidDatasetError(str(exc)) from None
    x = infos["x"]
    problems = structure_problems(x.shape, x.dtype, y) or value_problems(x.finite, y)
    if problems:
        raise InvalidDatasetError("invalid dataset", problems)
    y = y.long()
    return DatasetSummary(len(y), int(y.max()) + 1, list(x.shape[1:]), torch.bincount(y).tolist())
