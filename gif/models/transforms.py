"""A model's input preprocessing, declared with its upload in torchvision's preset vocabulary and applied by the engine.

Users train with ``Resize(256) → CenterCrop(224) → ToTensor() → Normalize(mean, std)`` and hold their data as
images; the service stores images as uint8 (``gif.io.images``), fed as float32 in [0, 1] like ``ToTensor``. An
``InputTransform`` replays the rest, on the job's device and a batch at a time as the model is fed
(``gif.data.Dataset.inputs_at``): the channel count (grayscale ↔ RGB, as torchvision's
``Grayscale``/``rgb_to_grayscale``), the resize of the shorter side (bilinear with antialiasing, torchvision's default
for tensors), the centre crop and the normalisation. Its output shape is known from the input
shape alone, so the API checks a job against its model before anything runs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from gif import devices
from gif.data import Dataset
from gif.errors import InvalidDatasetError

GRAYSCALE_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
MAX_SIDE = 8192


class InputTransform(BaseModel):
    """``{"resize": 256, "crop": 224, "mean": [...], "std": [...], "channels": 3}``; every key optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: PositiveInt | None = Field(
        None, le=MAX_SIDE, description="The shorter side is resized to this (bilinear, antialiased); aspect kept."
    )
    crop: PositiveInt | None = Field(None, le=MAX_SIDE, description="A centre crop of crop × crop pixels.")
    mean: list[float] | None = Field(None, min_length=1, max_length=3, description="Subtracted per channel.")
    std: list[float] | None = Field(None, min_length=1, max_length=3, description="Divided by, per channel.")
    channels: Literal[1, 3] | None = Field(None, description="Grayscale to RGB (repeat) or RGB to grayscale (luma).")

    @model_validator(mode="after")
    def _consistent(self) -> InputTransform:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} values but std {len(self.std)}")
            if any(s <= 0 for s in self.std):
                raise ValueError("std must be positive")
            if self.channels is not None and len(self.mean) not in (1, self.channels):
                raise ValueError(f"mean and std need 1 or {self.channels} values for {self.channels} channels")
        return self

    def describe(self) -> str:
        """One line for the report: the steps in the order they run."""
        steps = [f"{self.channels} channel(s)"] if self.channels else []
        steps += [f"resize {self.resize}"] if self.resize else []
        steps += [f"centre crop {self.crop}"] if self.crop else []
        steps += [f"normalise mean {self.mean} std {self.std}"] if self.mean is not None else []
        return " → ".join(steps) or "identity"

    def output_shape(self, sample_shape: list[int]) -> list[int]:
        """The shape of one transformed sample (C × H × W); ``ValueError`` saying why the input cannot take it."""
        if len(sample_shape) != 3:
            raise ValueError(f"an input transform takes images (C × H × W), not samples of shape {sample_shape}")
        channels, height, width = sample_shape
        if channels not in (1, 3):
            raise ValueError(f"an input transform takes 1 or 3 channels, not {channels}")
        channels = self.channels or channels
        if self.resize is not None:
            height, width = _resized(height, width, self.resize)
        if self.crop is not None:
            if self.crop > min(height, width):
                raise ValueError(f"a centre crop of {self.crop} does not fit in {height}×{width} images")
            height = width = self.crop
        if self.mean is not None and len(self.mean) not in (1, channels):
            raise ValueError(f"mean and std have {len(self.mean)} values for {channels}-channel images")
        return [channels, height, width]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A batch (N × C × H × W, float in [0, 1]) transformed."""
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.channels == 1 and x.shape[1] == 3:
            weights = torch.tensor(GRAYSCALE_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)
        if self.resize is not None:
            size = _resized(x.shape[-2], x.shape[-1], self.resize)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if self.crop is not None:
            top, left = _crop_origin(x.shape[-2], self.crop), _crop_origin(x.shape[-1], self.crop)
            x = x[..., top : top + self.crop, left : left + self.crop]
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()


def apply_input_transform(
    datasets: dict[str, Dataset], declared: dict[str, Any] | InputTransform | None, device: torch.device
) -> dict[str, Dataset]:
    """Every dataset of a job as its model is fed it, a batch at a time on ``device``: through the model's
    ``declared`` preprocessing (as recorded with the model, or given to ``gif edit``), or as it is without one. Nothing
    is transformed here: a transformed copy of the whole data would take far more memory than its uint8 images."""
    transform = None
    if declared is not None:
        transform = InputTransform.model_validate(declared)
        for role, data in datasets.items():
            try:
                transform.output_shape(data.sample_shape)
            except ValueError as exc:
                raise InvalidDatasetError(f"the model's input transform cannot take the {role} data: {exc}") from None
    where = devices.tensor_device(device)  # through the module: the CPU tests' CUDA double maps it to the CPU
    return {role: data.fed(transform, where) for role, data in datasets.items()}


def _resized(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` size: the shorter side becomes ``shorter``, the longer one keeps the aspect
    (truncated, as torchvision computes it)."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def _crop_origin(side: int, crop: int) -> int:
    """torchvision's ``center_crop`` offset: rounded half away from the top/left edge."""
    return int(round((side - crop) / 2.0))
