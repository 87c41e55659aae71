"""Hessian-vector products of a training loss on a fixed sample, H never formed.

The loss is ``Σ_terms weight · Σ_batch loss_fn(model(x), y)`` over a fixed, seeded sample
(for the Hessian: weight 1/N on the retained sample, i.e. the mean loss). The model runs in eval
mode, so BatchNorm uses its running statistics and the product is a pure function of the sample.

Three implementations give the same product (tests assert it):
- ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad``;
- ``double_backward``: Pearlmutter's trick, the first-order graph rebuilt at every product;
- ``cached_double_backward``: the first-order graph of the fixed sample built once and kept, so a
  product costs one extra backward pass. Its memory is measured before it is chosen.
No graph survives from one product to the next except that fixed first-order graph.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from gif.data import Dataset
from gif.errors import NonFiniteError
from gif.parameters import ParameterSpace, model_buffers, model_parameters

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HvpMethod = Literal["auto", "forward_over_reverse", "double_backward", "cached_double_backward"]


def cross_entropy_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="sum")


def squared_error_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½‖f(x) − y‖² summed over the batch: the loss of the paper's linear-regression toy."""
    return 0.5 * (outputs.reshape(targets.shape) - targets).pow(2).sum()


@dataclass(frozen=True)
class LossTerm:
    """``weight · Σ loss_fn(model(x_i), y_i)`` over one dataset; objectives are sums of terms."""

    data: Dataset
    weight: float


def default_cache_budget_bytes() -> int:
    """How much memory the cached first-order graph may take: ``$GIF_HVP_CACHE_BYTES``, else 4 GiB."""
    return int(os.environ.get("GIF_HVP_CACHE_BYTES", 4 * 1024**3))


class _SavedBytes:
    """Counts the bytes autograd saves for backward while active (distinct storages only)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> "_SavedBytes":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


class ModelObjective:
    """A model (in eval mode, weights frozen) with a weighted sum of loss terms over fixed batches."""

    def __init__(self, model: nn.Module, terms: list[LossTerm], loss_fn: LossFn = cross_entropy_sum, batch_size: int = 256):
        self.model = model.eval()
        self.space = ParameterSpace.of(model)
        self.params = model_parameters(model)
        self.buffers = model_buffers(model)
        self.loss_fn = loss_fn
        device = next(iter(self.params.values())).device
        self.batches = [
            (x.to(device), y.to(device), term.weight)
            for term in terms
            for x, y in term.data.batches(batch_size)
        ]

    def batch_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, weight: float) -> torch.Tensor:
        outputs = functional_call(self.model, {**params, **self.buffers}, (x,))
        return weight * self.loss_fn(outputs, y)

    def leaf_params(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().requires_grad_() for n, t in self.params.items()}

    def value(self) -> float:
        with torch.no_grad():
            return float(sum(self.batch_loss(self.params, x, y, w) for x, y, w in self.batches))

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the objective, batch by batch (no graph kept)."""
        total = self.space.zeros(next(iter(self.params.values())))
        for x, y, w in self.batches:
            leaves = self.leaf_params()
            grads = torch.autograd.grad(self.batch_loss(leaves, x, y, w), list(leaves.values()), allow_unused=True)
            total += self.space.flatten(tuple(_or_zeros(g, p) for g, p in zip(grads, leaves.values())))
        _check_finite(total, "gradient")
        return total


def _or_zeros(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _check_finite(v: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(v).all()):
        raise NonFiniteError(f"the {what} contains NaN or Inf")


class HessianOperator:
    """``v ↦ (H + λI) v`` for the objective's Hessian at the model's weights; counts its products.

    ``auto`` keeps the first-order graph of as many batches as ``cache_budget_bytes`` allows
    (all of them: ``cached_double_backward``) and rebuilds the others at every product.
    """

    def __init__(
        self,
        objective: ModelObjective,
        damping: float = 0.0,
        method: HvpMethod = "auto",
        cache_budget_bytes: int | None = None,
    ):
        self.objective = objective
        self.damping = damping
        self.count = 0
        self.seconds = 0.0
        batches = objective.batches
        cached_batches = 0
        if method == "cached_double_backward":
            cached_batches = len(batches)
        elif method == "auto":
            budget = default_cache_budget_bytes() if cache_budget_bytes is None else cache_budget_bytes
            per_sample = self.saved_bytes_per_sample()
            fitting = 0
            for x, _, _ in batches:
                if (fitting + x.shape[0]) * per_sample > budget:
                    break
                fitting += x.shape[0]
                cached_batches += 1
            method = "cached_double_backward" if cached_batches == len(batches) else "double_backward"
        self.method = method
        self.cached_batches = cached_batches
        self._cache = [self._first_order_graph(x, y, w) for x, y, w in batches[:cached_batches]]

    @property
    def size(self) -> int:
        return self.objective.space.size

    def saved_bytes_per_sample(self) -> float:
        """Memory a cached first-order graph holds per sample, measured on the largest batch."""
        x, y, w = max(self.objective.batches, key=lambda b: b[0].shape[0])
        with _SavedBytes() as saved:
            self._first_order_graph(x, y, w)
        return saved.total / x.shape[0]

    def _graphs(self):
        """(first-order graph, keep it) per batch: the cached ones, then the others rebuilt one at a time."""
        for graph in self._cache:
            yield graph, True
        for x, y, w in self.objective.batches[self.cached_batches :]:
            yield self._first_order_graph(x, y, w), False

    def _first_order_graph(self, x: torch.Tensor, y: torch.Tensor, w: float):
        leaves = self.objective.leaf_params()
        loss = self.objective.batch_loss(leaves, x, y, w)
        inputs = tuple(leaves.values())
        grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
        used = tuple(i for i, g in enumerate(grads) if g is not None and g.requires_grad)
        return tuple(grads[i] for i in used), tuple(inputs[i] for i in used), used

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        space = self.objective.space
        v_parts = space.unflatten(v)
        total = space.zeros(v)
        parts = space.unflatten(total)
        names = list(v_parts)
        if self.method == "forward_over_reverse":
            for x, y, w in self.objective.batches:
                grad_fn = grad(lambda p: self.objective.batch_loss(p, x, y, w))
                _, hv = jvp(grad_fn, (self.objective.params,), (v_parts,))
                for n in names:
                    parts[n] += hv[n]
        else:
            for (grads, inputs, used), keep in self._graphs():
                if not grads:
                    continue
                hv = torch.autograd.grad(
                    grads, inputs, grad_outputs=[v_parts[names[i]] for i in used], retain_graph=keep, allow_unused=True
                )
                for i, h in zip(used, hv):
                    if h is not None:
                        parts[names[i]] += h
        if self.damping:
            total.add_(v, alpha=self.damping)
        self.count += 1
        self.seconds += time.perf_counter() - start
        _check_finite(total, "Hessian-vector product")
        return total
