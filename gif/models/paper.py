"""The paper's four architectures (TinyNet, ResNet-18 with a CIFAR stem, VGG-11, an MLP) and their configs."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn


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


def cifar_resnet18(config: ImageClassifierConfig) -> nn.Module:
    """torchvision's ResNet-18 with the paper's 3×3 stride-1 stem and no max-pool (parameter names as torchvision's)."""
    from torchvision.models import resnet18

    model: nn.Module = resnet18(num_classes=config.num_classes)
    model.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
