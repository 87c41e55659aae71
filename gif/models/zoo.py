"""The model zoos by name: ``torchvision.<model>`` and ``timm.<model>`` (server-side code; weights uploaded as a
state dict, with the model's own ``state_dict()`` keys).

Every classifier that ``torchvision.models.list_models(module=torchvision.models)`` lists, built with
``get_model(name, weights=None, **config)``, and every architecture of ``timm.list_models()``, built with
``timm.create_model(name, pretrained=False, **config)``: nothing is downloaded. The config is
``num_classes`` plus the builder's own keyword arguments; ``build_problem`` checks it by building the
model on the ``meta`` device (no memory, no compute), so an unknown or ill-typed keyword is refused in the
builder's own words before anything runs. timm is imported only when a ``timm.`` name is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import torch
import torchvision
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class ZooConfig(BaseModel):
    """``num_classes`` plus any keyword argument the builder takes (e.g. ``dropout``, ``drop_path_rate``)."""

    model_config = ConfigDict(extra="allow")

    num_classes: int = Field(1000, ge=2, le=100_000)


@dataclass(frozen=True)
class Family:
    name: str
    models: Callable[[], list[str]]  # the model names the family offers, sorted
    create: Callable[..., nn.Module]  # (model name, **config) → a freshly initialised module
    describe: Callable[[str], str]


def _torchvision_describe(model: str) -> str:
    doc = (torchvision.models.get_model_builder(model).__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else model


@cache
def _timm() -> Any:
    import timm  # about 2 s: only where a timm name is used

    return timm


FAMILIES: dict[str, Family] = {
    "torchvision": Family(
        "torchvision",
        lambda: sorted(torchvision.models.list_models(module=torchvision.models)),
        lambda model, **config: torchvision.models.get_model(model, weights=None, **config),
        _torchvision_describe,
    ),
    "timm": Family(
        "timm",
        lambda: sorted(_timm().list_models()),
        lambda model, **config: _timm().create_model(model, pretrained=False, **config),
        lambda model: f"a timm architecture (timm.create_model({model!r}))",
    ),
}


@cache
def model_names(family: str) -> frozenset[str]:
    return frozenset(FAMILIES[family].models())


def build(family: str, model: str, config: ZooConfig) -> nn.Module:
    return FAMILIES[family].create(model, **config.model_dump())


@lru_cache(maxsize=512)
def _build_problem(family: str, model: str, config_json: str) -> str | None:
    try:
        with torch.device("meta"):
            FAMILIES[family].create(model, **json.loads(config_json))
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def build_problem(family: str, model: str, config: ZooConfig) -> str | None:
    """Why the builder cannot build ``model`` with ``config``, or None (checked once per config, on the meta device)."""
    problem = _build_problem(family, model, json.dumps(config.model_dump(), sort_keys=True))
    return None if problem is None else f"{family} {model} does not take this config: {problem}"


def description(family: str, model: str) -> str:
    what = FAMILIES[family].describe(model)
    return f"{family}.{model}: {what} Config: num_classes plus the builder's keyword arguments."
