"""Torchvision's classifiers by name (``torchvision.<model>``): server-side code, weights uploaded as a state dict.

Every classification model that ``torchvision.models.list_models(module=torchvision.models)`` lists is an
entry, built with ``get_model(name, weights=None, **config)``: nothing is downloaded, and the config is
``num_classes`` plus the builder's own keyword arguments. A config is checked by building the model on
the ``meta`` device (no memory, no compute), so an unknown or ill-typed keyword is refused with the
builder's own words before anything runs. Weights use the builder's ``state_dict()`` keys.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch
import torchvision
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

FAMILY = "torchvision"


class ZooConfig(BaseModel):
    """``num_classes`` plus any keyword argument the builder takes (e.g. ``dropout``, ``stochastic_depth_prob``)."""

    model_config = ConfigDict(extra="allow")

    num_classes: int = Field(1000, ge=2, le=100_000)


@lru_cache(maxsize=512)
def _build_problem(name: str, config_json: str) -> str | None:
    """Why ``get_model(name, **config)`` cannot build, or None (built once per config, on the meta device)."""
    try:
        with torch.device("meta"):
            torchvision.models.get_model(name, weights=None, **json.loads(config_json))
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def config_model(name: str) -> type[ZooConfig]:
    """The config class of one entry: ``ZooConfig`` whose validation also builds the model on the meta device."""

    class Config(ZooConfig):
        @model_validator(mode="after")
        def _builds(self) -> Config:
            problem = _build_problem(name, json.dumps(self.model_dump(), sort_keys=True))
            if problem is not None:
                raise ValueError(f"torchvision.models.{name} does not take this config: {problem}")
            return self

    Config.__name__ = Config.__qualname__ = f"TorchvisionConfig_{name}"
    return Config


def builder(name: str) -> Any:
    def build(config: ZooConfig) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, **config.model_dump())

    return build


def description(name: str) -> str:
    doc = (torchvision.models.get_model_builder(name).__doc__ or "").strip()
    first = doc.splitlines()[0].strip() if doc else name
    return f"torchvision.models.{name}: {first} Config: num_classes plus the builder's keyword arguments."


def classifier_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))
