"""Tensor datasets: validation, the bundled real datasets and seeded splits (files are read by ``gif.io.datasets``).

A dataset is ``x`` (N × sample shape) and ``y`` (N integer labels). ``x`` is held as stored (uint8 images take a
quarter of float32's memory) and converted only a batch at a time, as the model is fed it: ``uint8`` images become
float32 in [0, 1] (divided by 255), as torchvision's ``ToTensor`` does, then go through the model's input transform
when it has one (``gif.models.transforms``), on the job's device. No other normalisation is applied.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from gif.errors import InvalidDatasetError
from gif.io.files import write_safetensors

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


MAX_ID_CHARS = 1024


class Preprocessing(Protocol):
    """A model's input transform (``gif.models.transforms.InputTransform``): float images in, the model's inputs out."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def output_shape(self, sample_shape: list[int]) -> list[int]: ...


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor  # as stored: uint8 images or float32, N × sample shape
    y: torch.Tensor  # int64, N
    ids: tuple[str, ...] | None = None  # the user's own name of each example, when the data carries them
    preprocessing: Preprocessing | None = None  # the model's input transform, run on each batch as it is fed
    device: torch.device | None = None  # where the model's inputs are made (the job's); None: where ``x`` is

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self) else 0

    @property
    def sample_shape(self) -> list[int]:
        """One stored sample's shape."""
        return list(self.x.shape[1:])

    @property
    def input_shape(self) -> list[int]:
        """One sample's shape as the model is fed it: after the input transform, if there is one."""
        if self.preprocessing is None:
            return self.sample_shape
        return self.preprocessing.output_shape(self.sample_shape)

    def fed(self, preprocessing: Preprocessing | None, device: torch.device) -> Dataset:
        """This data with its inputs made on ``device`` and put through ``preprocessing`` batch by batch."""
        return replace(self, preprocessing=preprocessing, device=device)

    def inputs_at(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The model's inputs for the examples at ``index``. The stored values move to ``device`` first (uint8 is a
        quarter of float32's bytes), then are converted and transformed there."""
        x = self.x[index]
        if self.device is not None:
            x = x.to(self.device)
        if x.dtype == torch.uint8:
            # a tensor divisor (filled there, no copy from the host): CUDA multiplies by the reciprocal of a Python
            # number, which can be a last bit off the CPU's quotient
            x = x.float() / torch.full((), 255.0, device=x.device)
        return self.preprocessing(x) if self.preprocessing is not None else x

    def subset(self, indices: torch.Tensor | Sequence[int]) -> Dataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        ids = tuple(self.ids[i] for i in idx.tolist()) if self.ids is not None else None
        return replace(self, x=self.x[idx], y=self.y[idx], ids=ids)

    def split(self, mask: torch.Tensor) -> tuple[Dataset, Dataset]:
        """(the examples where ``mask`` holds, the others), each in the original order."""
        return self.subset(torch.nonzero(mask).flatten()), self.subset(torch.nonzero(~mask).flatten())

    def with_labels(self, y: torch.Tensor) -> Dataset:
        return replace(self, y=y)

    def relabelled(self, indices: Sequence[int], labels: Sequence[int]) -> Dataset:
        y = self.y.clone()
        y[torch.as_tensor(indices, dtype=torch.long)] = torch.as_tensor(labels, dtype=torch.long)
        return self.with_labels(y)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(the model's inputs, labels) ``batch_size`` examples at a time, in order, each made only when reached; the
        labels stay on the CPU."""
        for start in range(0, len(self), batch_size):
            yield self.inputs_at(slice(start, start + batch_size)), self.y[start : start + batch_size]

    def indices_of(self, ids: Sequence[str | int]) -> list[int]:
        """The positions of the examples with these ids (compared as text: 7 and "7" name one example)."""
        if self.ids is None:
            raise InvalidDatasetError("the training data carries no ids: name the examples by their indices")
        position = {name: i for i, name in enumerate(self.ids)}
        unknown = [name for name in ids if str(name) not in position]
        if unknown:
            raise InvalidDatasetError("ids not in the training data", [f"unknown ids: {unknown[:10]}"])
        return [position[str(name)] for name in ids]

    def save(self, path: str | Path) -> None:
        metadata = {"ids": json.dumps(list(self.ids))} if self.ids is not None else None
        write_safetensors(path, {"x": self.x, "y": self.y}, metadata)


def structure_problems(x_shape: tuple[int, ...], x_dtype: torch.dtype, y: torch.Tensor) -> list[str]:
    problems = []
    if len(x_shape) < 2:
        problems.append(f"x must have a sample axis and at least one feature axis (got shape {list(x_shape)})")
    if y.dim() != 1:
        problems.append(f"y must be one-dimensional (got shape {list(y.shape)})")
    if len(x_shape) >= 1 and y.dim() == 1 and x_shape[0] != y.shape[0]:
        problems.append(f"x has {x_shape[0]} samples but y has {y.shape[0]}")
    if y.dim() == 1 and y.shape[0] == 0:
        problems.append("the dataset is empty")
    if x_dtype not in FLOAT_DTYPES + (torch.uint8,):
        problems.append(f"x must be float32 or uint8 (got {x_dtype})")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        problems.append(f"y must hold integer labels (got {y.dtype})")
    return problems


def value_problems(x_finite: bool, y: torch.Tensor) -> list[str]:
    return (["x contains NaN or Inf"] if not x_finite else []) + (
        ["y contains negative labels"] if bool((y < 0).any()) else []
    )


def id_problems(ids: Sequence[object], num_samples: int) -> list[str]:
    """Why ``ids`` cannot name ``num_samples`` examples one to one (text or integers, distinct as text)."""
    if len(ids) != num_samples:
        return [f"there are {len(ids)} ids for {num_samples} examples"]
    if not all(isinstance(i, str | int) and not isinstance(i, bool) for i in ids):
        return ["ids must be text or integers"]
    texts = [str(i) for i in ids]
    if any(len(t) > MAX_ID_CHARS for t in texts):
        return [f"ids must be at most {MAX_ID_CHARS} characters"]
    if len(set(texts)) != len(texts):
        return ["ids must not repeat"]
    return []


def stored_dataset(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, ids: Sequence[str | int] | None = None
) -> Dataset:
    """Validate raw arrays, raising ``InvalidDatasetError`` listing every problem, and hold them as stored: uint8
    images stay uint8 (converted a batch at a time as the model is fed them), other floats become float32."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    problems = structure_problems(tuple(x.shape), x.dtype, y)
    if ids is not None and not problems:
        problems = id_problems(ids, int(y.shape[0]))
    if problems:
        raise InvalidDatasetError("invalid dataset", problems)
    x = x if x.dtype == torch.uint8 else x.float()
    y = y.long()
    problems = value_problems(bool(torch.isfinite(x).all()), y)
    if problems:
        raise InvalidDatasetError("invalid dataset", problems)
    return Dataset(x.contiguous(), y.contiguous(), tuple(str(i) for i in ids) if ids is not None else None)


def make_dataset(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, ids: Sequence[str | int] | None = None
) -> Dataset:
    """``stored_dataset`` with uint8 images converted whole to float32 in [0, 1]: for the small bundled datasets,
    whose pixels the demos and benchmarks work on as numbers (users' files are read as stored: ``gif.io.datasets``)."""
    data = stored_dataset(x, y, ids)
    return replace(data, x=data.x.float() / 255.0) if data.x.dtype == torch.uint8 else data


# --- the real datasets bundled with the project's shared data -------------------------------------


def shared_data_dir() -> Path:
    """``$GIF_DATA_DIR``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("GIF_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise InvalidDatasetError(f"{path.name}: IDX magic {found:#010x} != {magic:#010x}")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(root: str | Path | None = None) -> Dataset:
    """The 10,000 MNIST test digits as N×1×28×28 float32 in [0, 1]."""
    root = Path(root or shared_data_dir()) / "mnist"
    images = _read_idx(root / "t10k-images-idx3-ubyte.gz", 0x00000803)
    labels = _read_idx(root / "t10k-labels-idx1-ubyte.gz", 0x00000801)
    return make_dataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_digits() -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images) as N×1×8×8 float32 in [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return make_dataset(x, torch.from_numpy(bunch.target.astype(np.int64)))


# --- seeded index arithmetic ----------------------------------------------------------------------


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of ``range(n)`` into (``fraction`` of it, the rest), each sorted."""
    perm = seeded_permutation(n, seed)
    cut = int(round(n * fraction))
    return perm[:cut].sort().values, perm[cut:].sort().values


def sample_indices(pool: torch.Tensor, count: int | Literal["all"], seed: int) -> torch.Tensor:
    """``count`` entries of ``pool`` drawn without replacement (all of it for ``"all"`` or a larger count)."""
    if count == "all" or count >= len(pool):
        return pool
    return pool[seeded_permutation(len(pool), seed)[:count]].sort().values
