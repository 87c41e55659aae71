"""Model instrumentation: the only place where a model's computation is observed.

Selection works on *layers*: every linear map or convolution the model computes with one of its own
parameters as the weight — ``nn.Linear``, ``nn.Conv1d/2d/3d`` (grouped and depthwise included), a
timm or torchvision block that calls ``F.linear`` itself, the packed input projection of
``nn.MultiheadAttention`` (``in_proj_weight``: its rows are units), and the ``aten.linear`` /
``aten.conv*d`` nodes of an exported program, which has no modules to hook. They are found by
watching the functions called during a forward pass (a ``TorchFunctionMode``), not by module type,
so one mechanism serves eager modules and exported graphs. Normalisation layers, embeddings, class
tokens and position embeddings are never layers: they are not the weight of such a call.

``unit_statistics`` returns, per layer, the mean over batch (and space or tokens) of the layer's raw
output per output unit and of the gradient of an analysed loss with respect to that output, summed and
returned in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_aten = torch.ops.aten
LINEAR_FUNCTIONS = {F.linear, _aten.linear.default}
CONVOLUTION_FUNCTIONS = {
    F.conv1d,
    F.conv2d,
    F.conv3d,
    *(
        getattr(getattr(_aten, op), overload)
        for op in ("conv1d", "conv2d", "conv3d")
        for overload in ("default", "padding")
    ),
}

_ATTENTION_ARGUMENTS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias")


@dataclass(frozen=True)
class Layer:
    """A weight whose rows are output units, the bias added to those units (if any), and the unit count."""

    name: str
    weight: str
    bias: str | None
    units: int

    @property
    def parameters(self) -> tuple[str, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)


def _layer_name(weight: str) -> str:
    for suffix in (".weight", "_weight"):
        if weight.endswith(suffix):
            return weight[: -len(suffix)]
    return weight


class _Accumulator:
    """A per-unit sum and its count, summed in float64 from the first addition on: the selection ranks units by these
    means, and float32 sums round differently with each summation order (another device, another batch size)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, per_unit_sum: torch.Tensor, count: int) -> None:
        s = per_unit_sum.detach().double()
        self.total = s if self.total is None else self.total + s
        self.count += count

    def add_outputs(self, t: torch.Tensor, axis: int) -> None:
        """Sum over every axis but the unit axis."""
        moved = t.detach().movedim(axis, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        self.add(flat.sum(0, dtype=torch.float64), flat.shape[0])

    def mean(self) -> torch.Tensor:
        """The mean per unit, in float64 on the CPU."""
        assert self.total is not None, "the layer never ran on the analysed data"
        return (self.total / self.count).cpu()


class _LayerWatch(TorchFunctionMode):
    """Records, per weight parameter, the calls that use it as a linear or convolution weight."""

    def __init__(self, model: nn.Module, with_gradients: bool):
        super().__init__()
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.with_gradients = with_gradients
        self.layers: dict[str, Layer] = {}
        self.outputs: dict[str, _Accumulator] = {}
        self.gradients: dict[str, _Accumulator] = {}

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            return self._attention(func, args, kwargs)
        result = func(*args, **kwargs)
        if func in LINEAR_FUNCTIONS or func in CONVOLUTION_FUNCTIONS:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            assert weight is not None  # F.linear and the convolutions require it
            axis = -1 if func in LINEAR_FUNCTIONS else (1 if result.dim() == weight.dim() else 0)
            if (layer := self._layer(weight, bias)) is not None:
                self.outputs[layer.name].add_outputs(result, axis)
                if self.with_gradients and result.requires_grad:
                    result.register_hook(lambda g, name=layer.name: self.gradients[name].add_outputs(g, axis))
        return result

    def _layer(self, weight: torch.Tensor, bias: torch.Tensor | None) -> Layer | None:
        weight_name = self.names.get(id(weight))
        if weight_name is None:  # a view or a computed tensor: not one of the model's own parameters
            return None
        bias_name = self.names.get(id(bias)) if bias is not None else None
        layer = Layer(_layer_name(weight_name), weight_name, bias_name, weight.shape[0])
        if layer.name not in self.layers:
            self.layers[layer.name] = layer
            self.outputs[layer.name], self.gradients[layer.name] = _Accumulator(), _Accumulator()
        return self.layers[layer.name]

    def _attention(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``nn.MultiheadAttention``: its packed input projection ``in_proj_weight`` is a layer of 3·E units.

        The projection happens inside one function, so it is recomputed here for the output statistics; its
        output gradient summed over tokens is the gradient of the bias, read from a copy passed in its place
        (a zero bias when there is none: adding it changes nothing)."""
        bound = {**dict(zip(_ATTENTION_ARGUMENTS, args)), **kwargs}
        weight, bias, query = bound.get("in_proj_weight"), bound.get("in_proj_bias"), bound["query"]
        layer = self._layer(weight, bias) if weight is not None else None
        if weight is None or layer is None:
            return func(*args, **kwargs)
        self.outputs[layer.name].add_outputs(F.linear(query, weight, bias), -1)
        if self.with_gradients and torch.is_grad_enabled():
            tokens = query.numel() // query.shape[-1]
            probe = bias * 1 if bias is not None else weight.new_zeros(weight.shape[0])
            probe.requires_grad_(True)
            probe.register_hook(lambda g: self.gradients[layer.name].add(g, tokens))
            args, kwargs = _with_argument(args, kwargs, 6, "in_proj_bias", probe)
        return func(*args, **kwargs)


def _with_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str, value: object
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > position:
        return (*args[:position], value, *args[position + 1 :]), kwargs
    return args, {**kwargs, name: value}


def find_layers(model: nn.Module, x: torch.Tensor) -> list[Layer]:
    """The model's layers (module docstring) seen in one forward pass on ``x``, in parameter registration order."""
    watch = _LayerWatch(model, with_gradients=False)
    with torch.no_grad(), watch:
        model(x)
    return _in_registration_order(model, watch.layers)


def _in_registration_order(model: nn.Module, layers: dict[str, Layer]) -> list[Layer]:
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return sorted(layers.values(), key=lambda layer: order[layer.weight])


def unit_statistics(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor, float]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    with_gradients: bool,
) -> tuple[list[Layer], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The layers that ran, and per layer (mean output per unit, mean output-gradient per unit) over the batches.

    ``batches`` are ``(x, y, weight)``; the analysed loss is ``Σ weight · loss_fn(model(x), y)``.
    Gradient statistics are empty unless ``with_gradients``.
    """
    model.eval()
    watch = _LayerWatch(model, with_gradients)
    for x, y, weight in batches:
        if with_gradients:
            with torch.enable_grad():
                with watch:
                    loss = weight * loss_fn(model(x), y)
                loss.backward()
        else:
            with torch.no_grad(), watch:
                model(x)
    model.zero_grad(set_to_none=True)
    layers = _in_registration_order(model, watch.layers)
    output_means = {layer.name: watch.outputs[layer.name].mean() for layer in layers}
    gradient_means = (
        {
            layer.name: watch.gradients[layer.name].mean()
            for layer in layers
            if watch.gradients[layer.name].total is not None
        }
        if with_gradients
        else {}
    )
    return layers, output_means, gradient_means
