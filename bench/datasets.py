"""The benchmarks' own data: the CIFAR-10 subset of the shared data, and the paper's backdoor (method.md §5). The
engine and the service never need them: users bring their data, triggers included."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gif.data import Dataset, make_dataset, shared_data_dir, split_indices
from gif.errors import InvalidDatasetError


def load_cifar10(split: Literal["train", "test"], root: str | Path | None = None) -> Dataset:
    """The CIFAR-10 subset: 4,000 training or 1,000 test images, N×3×32×32 float32 in [0, 1]."""
    root = Path(root or shared_data_dir()) / "cifar10"
    pattern = "data_batch_1_*.bin" if split == "train" else "test_batch_*.bin"
    files = sorted(root.glob(pattern))
    if not files:
        raise InvalidDatasetError(f"no CIFAR-10 {split} files in {root}")
    records = np.concatenate([np.fromfile(f, dtype=np.uint8).reshape(-1, 3073) for f in files])
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return make_dataset(images, torch.from_numpy(records[:, 0].astype(np.int64)))


def checkerboard_trigger(x: torch.Tensor, intensity: float = 16 / 255) -> torch.Tensor:
    """Add ``intensity`` to every pixel where (row + col) is odd, clamped to [0, 1]."""
    rows = torch.arange(x.shape[-2]).unsqueeze(1)
    cols = torch.arange(x.shape[-1]).unsqueeze(0)
    pattern = ((rows + cols) % 2 == 1).to(x.dtype)
    return (x + intensity * pattern).clamp(0.0, 1.0)


def poison(dataset: Dataset, fraction: float, target: int, seed: int) -> tuple[Dataset, torch.Tensor]:
    """Trigger a seeded ``fraction`` of the images and label them ``target``; returns the data and their indices."""
    chosen, _ = split_indices(len(dataset), fraction, seed)
    x, y = dataset.x.clone(), dataset.y.clone()
    x[chosen] = checkerboard_trigger(x[chosen])
    y[chosen] = target
    return Dataset(x, y), chosen
