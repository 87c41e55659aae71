"""Hessian-vector products of a training loss on a fixed sample, H never formed.

The loss is ``Σ_terms weight · Σ_batch loss_fn(model(x), y)`` over a fixed, seeded sample
(for the Hessian: weight 1/N on the retained sample, i.e. the mean loss). The model runs in eval
mode, so BatchNorm uses its running statistics and the product is a pure function of the sample.

Three implementations give the same product (tests assert it):
- ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad``;
- ``double_backward``: Pearlmutter's trick, the first-order graph rebuilt at every product;
- ``cached_double_backward``: the first-order graph of the fixed sample built once and kept, so a
  product costs one extra backward pass. It keeps as many batches' graphs as the cache budget allows
  (half the device's free memory unless ``GIF_HVP_CACHE_BYTES`` says otherwise) and rebuilds the rest.
The sample is cut into batches of ``batch_size`` examples, or with ``auto`` into the largest that fit the cache budget
(``fitting_batch_size``), so that a large device is not fed small batches.
The implementation ``auto`` times one product of each implementation that works for the model on the first batch and
keeps the fastest: which one wins differs by device and model. No graph survives from one product to
the next except that fixed first-order graph.

``compiled`` is ``torch.compile`` of one batch's product written with torch.func transforms (forward-over-reverse
for the Hessian; jvp, the loss's output Hessian and vjp for the Gauss-Newton matrix), traced whole (``fullgraph``) and
compiled once per batch shape before the solve; double backward cannot be compiled (AOTAutograd does not support
``create_graph``). ``auto`` tries it only when the solve's expected products would repay the compile time
(``compile_repaid``); where compiling fails (no C compiler, an operator inductor cannot lower, a graph break) the
operator falls back to the fastest eager product and says why in ``compile_failure``.

The same operator gives the generalised Gauss-Newton matrix instead (``curvature="gauss_newton"``):
G = Jᵀ H_out J, with J the Jacobian of the model's outputs in its parameters and H_out the Hessian of the loss
in the outputs (for the cross-entropy, diag(p) − ppᵀ per example: positive semi-definite). G drops the
Hessian's second-order term Σ ∂ℓ/∂f · ∇²f, and equals H where the model is linear in its parameters. One
product (``jvp_vjp``) is one forward pass carrying the tangent J v (forward-mode AD), H_out applied to it on the
outputs alone, and one backward pass for Jᵀ(H_out J v).

Curvature code runs attention on PyTorch's math kernel (``scaled_dot_product_attention``'s fused CPU
and CUDA kernels have no double-backward) and ``hardsigmoid`` as the equal ``relu6(x + 3) / 6`` (its
backward has no derivative); the rest of the engine, and the user's model, keep the fast kernels.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.func import functional_call, grad, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from gif.data import Dataset
from gif.devices import available_memory_bytes, synchronize
from gif.parameters import ParameterSpace, ensure_finite, model_buffers, model_parameters

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HvpMethod = Literal["auto", "forward_over_reverse", "double_backward", "cached_double_backward", "compiled"]
Curvature = Literal["hessian", "gauss_newton"]
GAUSS_NEWTON_PRODUCT = "jvp_vjp"  # the eager implementation of the Gauss-Newton product
COMPILED_PRODUCT = "compiled"
TYPICAL_SOLVE_PRODUCTS = 40  # a solve to the default tolerance takes 16-38 products (bench/RESULTS.md sections 8, 9)
# The largest share of the best eager product's time a compiled product saved (bench/RESULTS.md section 9, two runs
# on 2 shared CPU cores): the compiled Hessian product was 1.09-1.46 times the cached double backward's time on
# TinyNet and VGG-11, the compiled Gauss-Newton product 0.89-1.11 times jvp_vjp's. Where nothing was saved auto never
# compiles.
COMPILED_SAVING_BOUND: dict[Curvature, float] = {"hessian": 0.0, "gauss_newton": 0.11}
COMPILE_SECONDS_BASE = 10.0  # a cold CPU compile of a product: base + per forward operator (section 9: TinyNet's 16
COMPILE_SECONDS_PER_OPERATOR = 3.0  # operators 69-72 s, VGG-11's 45 operators 147-249 s on 2 shared cores)
CACHE_SHARE_OF_FREE_MEMORY = 0.5  # the rest is for the solver's vectors, the step search and evaluation
FALLBACK_CACHE_BUDGET_BYTES = 4 * 1024**3  # where free memory cannot be told
BATCH_PROBE = 16  # examples in the larger of the two probe graphs that measure a graph's bytes per example


Graph = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[int, ...]]
"""One batch's first-order graph: its gradients, the parameters they came from, and those parameters' positions."""
ObjectiveBatch = tuple[torch.Tensor, torch.Tensor, float]
"""Inputs, targets and the weight of their loss term."""
BatchProduct = Callable[[ObjectiveBatch, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
"""One batch's curvature-vector product, by parameter name (parameters it does not reach left out)."""


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


def default_cache_budget_bytes(device: torch.device) -> int:
    """How much memory the cached first-order graphs may take: ``$GIF_HVP_CACHE_BYTES``, else half of what is
    free on ``device`` now (4 GiB where that cannot be told)."""
    if "GIF_HVP_CACHE_BYTES" in os.environ:
        return int(os.environ["GIF_HVP_CACHE_BYTES"])
    free = available_memory_bytes(device)
    return FALLBACK_CACHE_BUDGET_BYTES if free is None else int(free * CACHE_SHARE_OF_FREE_MEMORY)


_HARDSIGMOIDS = {F.hardsigmoid, torch.ops.aten.hardsigmoid.default}


class _TwiceDifferentiable(TorchFunctionMode):
    """Functions whose backward has no derivative, computed as equal functions that have one (curvature code only).

    ``hardsigmoid`` (MobileNetV3's squeeze-excitation gate) is ``relu6(x + 3) / 6`` exactly."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func in _HARDSIGMOIDS:  # the functional, or an exported program's ATen node
            return F.relu6(args[0] + 3) / 6
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def curvature_kernels() -> Iterator[None]:
    """Kernels with second derivatives: attention on the math backend, activations rewritten where needed."""
    with sdpa_kernel([SDPBackend.MATH]), _TwiceDifferentiable():
        yield


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

    def __enter__(self) -> _SavedBytes:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def fitting_batch_size(samples: int, graph_bytes: Callable[[int], int], budget: int) -> int:
    """The product batch for ``samples`` examples that fits ``budget`` bytes (``solver.batch_size: auto``).

    ``graph_bytes(n)``, a first-order graph's bytes on n examples, is measured at two probe sizes and taken as affine
    (weights and data once, activations per example). The whole sample where its graph fits the budget; else the
    largest batch that fits half of it, since the cache fills the budget with such batches and a product rebuilds one
    more beside them; the sample is then split evenly, so that no small remainder batch idles the device."""
    large = min(BATCH_PROBE, samples)
    small = large // 2
    if small == 0:
        return samples
    measured_small, measured_large = graph_bytes(small), graph_bytes(large)
    per_example = (measured_large - measured_small) / (large - small)
    fixed = measured_small - per_example * small
    if per_example <= 0 or fixed + per_example * samples <= budget:
        return samples
    largest = max(1, int((budget / 2 - fixed) // per_example))
    batches = math.ceil(samples / largest)
    return math.ceil(samples / batches)


class ModelObjective:
    """A model (in eval mode, weights frozen) with a weighted sum of loss terms over fixed batches of ``batch_size``
    examples, or with ``auto`` the batch that fits the device's cache budget (``fitting_batch_size``)."""

    def __init__(
        self,
        model: nn.Module,
        terms: list[LossTerm],
        loss_fn: LossFn = cross_entropy_sum,
        batch_size: int | Literal["auto"] = 256,
    ):
        self.model = model.eval()
        self.space = ParameterSpace.of(model)
        self.params = model_parameters(model)
        self.buffers = model_buffers(model)
        self.loss_fn = loss_fn
        device = next(iter(self.params.values())).device
        if batch_size == "auto":
            probe = max((term.data for term in terms), key=len)
            batch_size = fitting_batch_size(
                len(probe), lambda n: self._probe_bytes(probe, n), default_cache_budget_bytes(device)
            )
        self.batch_size = batch_size
        self.batches = [
            (x.to(device), y.to(device), term.weight) for term in terms for x, y in term.data.batches(batch_size)
        ]

    def batch_loss(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, weight: float
    ) -> torch.Tensor:
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
        ensure_finite(total, "the gradient contains NaN or Inf")
        return total

    def _probe_bytes(self, data: Dataset, n: int) -> int:
        """The first-order graph's bytes on the first n examples of ``data``, copied as a batch is on a device."""
        x, y = next(iter(data.batches(n)))
        device = next(iter(self.params.values())).device
        return self.graph_bytes(x.to(device, copy=True), y.to(device, copy=True), 1.0)

    def first_order_graph(self, x: torch.Tensor, y: torch.Tensor, w: float) -> Graph:
        """The batch's gradient with its graph kept (``create_graph``): differentiated once more, a product."""
        leaves = self.leaf_params()
        loss = self.batch_loss(leaves, x, y, w)
        inputs = tuple(leaves.values())
        grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
        used = tuple(i for i, g in enumerate(grads) if g is not None and g.requires_grad)
        return tuple(grads[i] for i in used), tuple(inputs[i] for i in used), used

    def graph_bytes(self, x: torch.Tensor, y: torch.Tensor, w: float) -> int:
        """The memory a cached first-order graph of (x, y) holds."""
        with _SavedBytes() as saved, curvature_kernels():
            self.first_order_graph(x, y, w)
        return saved.total


def _first_cause(exc: BaseException) -> str:
    """An exception in one line: its type and first line, and where dynamo wraps an operator's error (``...: got
    NotImplementedError('...')``) that error too."""
    text = str(exc).strip()
    lines = text.splitlines() or [""]
    wrapped = next((line.split(": got ", 1)[1] for line in lines if ": got " in line), None)
    return f"{type(exc).__name__}: {lines[0][:200]}" + (f" ({wrapped[:200]})" if wrapped else "")


def _or_zeros(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def expected_solve_products(kind: str, max_iterations: int) -> int:
    """Products a solve is expected to take: two per iteration up to its cap, but no more than a typical solve to
    the default tolerance; Neumann's power iteration (20 steps on the normal equations) adds 40."""
    return min(2 * max_iterations + 2, TYPICAL_SOLVE_PRODUCTS) + (40 if kind == "neumann" else 0)


class _OperatorCount(TorchDispatchMode):
    """Counts the ATen operators run while active."""

    count = 0

    def __torch_dispatch__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def forward_operators(objective: ModelObjective) -> int:
    """The ATen operators of one forward pass (and loss) on one example: the size of the graph a compile traces."""
    x, y, w = objective.batches[0]
    operators = _OperatorCount()  # type: ignore[no-untyped-call]  # TorchDispatchMode.__init__ is untyped
    with torch.no_grad(), operators:
        objective.batch_loss(objective.params, x[:1], y[:1], w)
    return operators.count


def estimated_compile_seconds(operators: int) -> float:
    """A cold compile's seconds for a model of ``operators`` forward operators: compile time grows with the traced
    graph, not with the data."""
    return COMPILE_SECONDS_BASE + COMPILE_SECONDS_PER_OPERATOR * operators


def compile_repaid(
    curvature: Curvature, eager_product_seconds: float, expected_products: int, compile_seconds: float
) -> bool:
    """Whether compiling could pay for itself within the solve: the most a compiled product saved on the best eager
    one (``COMPILED_SAVING_BOUND``) times the solve's expected products, against the compile time."""
    return COMPILED_SAVING_BOUND[curvature] * eager_product_seconds * expected_products > compile_seconds


def _product_function(objective: ModelObjective, curvature: Curvature) -> Callable[..., dict[str, torch.Tensor]]:
    """One batch's product as a pure function of (parameters, vector, inputs, targets, weight), in torch.func
    transforms, which torch.compile traces (autograd.grad with create_graph it does not)."""
    model, buffers, loss_fn = objective.model, objective.buffers, objective.loss_fn

    def hessian_product(
        params: dict[str, torch.Tensor], v: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: float
    ) -> dict[str, torch.Tensor]:
        gradient = grad(lambda p: w * loss_fn(functional_call(model, {**p, **buffers}, (x,)), y))
        product: dict[str, torch.Tensor] = jvp(gradient, (params,), (v,))[1]
        return product

    def gauss_newton_product(
        params: dict[str, torch.Tensor], v: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: float
    ) -> dict[str, torch.Tensor]:
        def outputs(p: dict[str, torch.Tensor]) -> torch.Tensor:
            out: torch.Tensor = functional_call(model, {**p, **buffers}, (x,))
            return out

        def loss(f: torch.Tensor) -> torch.Tensor:
            return w * loss_fn(f, y)

        logits, jv = jvp(outputs, (params,), (v,))[:2]
        h_out_jv = jvp(grad(loss), (logits,), (jv,))[1]
        pullback = vjp(outputs, params)[1]
        product: dict[str, torch.Tensor] = pullback(h_out_jv)[0]
        return product

    return gauss_newton_product if curvature == "gauss_newton" else hessian_product


class CompiledProduct:
    """``torch.compile`` of one batch's product (whole graphs only: a graph break is a failure), compiled for each
    batch shape by ``prepare`` before it is used, so that the solve never waits on the compiler."""

    def __init__(self, objective: ModelObjective, curvature: Curvature):
        self.objective = objective
        self._product = torch.compile(_product_function(objective, curvature), fullgraph=True)
        self._shapes: set[tuple[int, ...]] = set()
        self.device = next(iter(objective.params.values())).device
        self.seconds = 0.0  # spent compiling, failed attempts included

    def prepare(self, batches: list[ObjectiveBatch]) -> None:
        """Compile for the shapes of ``batches`` not compiled for yet (``seconds`` counts the time, one product each
        included). Raises what compiling raises, and where dynamo would run the function eagerly instead (its
        recompile limit reached) that too."""
        space = self.objective.space
        zeros = space.unflatten(space.zeros(next(iter(self.objective.params.values()))))
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            for batch in batches:
                if tuple(batch[0].shape) in self._shapes:
                    continue
                synchronize(self.device)
                start = time.perf_counter()
                try:
                    self(batch, zeros)
                    synchronize(self.device)
                finally:
                    self.seconds += time.perf_counter() - start
                self._shapes.add(tuple(batch[0].shape))

    def __call__(self, batch: ObjectiveBatch, v_parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y, w = batch
        product: dict[str, torch.Tensor] = self._product(self.objective.params, v_parts, x, y, w)
        return product


class HessianOperator:
    """``v ↦ (H + λI) v`` for the objective's Hessian at the model's weights (or its Gauss-Newton matrix G, with
    ``curvature="gauss_newton"``); counts its products.

    ``method`` is a product implementation, or ``auto``: the fastest on the first batch (``trial_seconds`` holds
    each one's time), the compiled product among them only where ``expected_products`` would repay its compile time.
    The cached implementation keeps the first-order graphs of as many batches as ``cache_budget_bytes`` allows
    (``cached_batches``) and rebuilds the others at every product. The Gauss-Newton product is ``jvp_vjp`` eager or
    ``compiled``. ``compile_seconds`` is what compiling took; ``compile_failure`` why it failed, if it did.
    """

    def __init__(
        self,
        objective: ModelObjective,
        damping: float = 0.0,
        method: HvpMethod = "auto",
        cache_budget_bytes: int | None = None,
        curvature: Curvature = "hessian",
        expected_products: int = TYPICAL_SOLVE_PRODUCTS,
    ):
        self.objective = objective
        self.damping = damping
        self.curvature = curvature
        self.expected_products = expected_products
        self.count = 0
        self.seconds = 0.0
        self.trial_seconds: dict[str, float] = {}
        self.compile_seconds = 0.0
        self.compile_failure: str | None = None
        self.device = next(iter(objective.params.values())).device
        self.cached_batches = 0
        self._cache: list[Graph] = []
        self._compiled: CompiledProduct | None = None
        self._tangents: dict[str, torch.Tensor] = {}
        if curvature == "gauss_newton":
            if method not in ("auto", COMPILED_PRODUCT):
                raise ValueError(
                    f"the Gauss-Newton product is {GAUSS_NEWTON_PRODUCT} or {COMPILED_PRODUCT}, not {method}"
                )
            if method == COMPILED_PRODUCT:
                self.method: str = COMPILED_PRODUCT if self._compile(objective.batches) else GAUSS_NEWTON_PRODUCT
            else:
                self.method = self._fastest({GAUSS_NEWTON_PRODUCT: self._product_gauss_newton}, may_compile=True)
            return
        may_compile = method == "auto"
        if method == COMPILED_PRODUCT:
            if self._compile(objective.batches):
                self.method = COMPILED_PRODUCT
                return
            method = "auto"  # the fastest eager product instead; compile_failure says why
        fitting, first_graph = 0, cast(Graph | None, None)
        if method in ("auto", "cached_double_backward"):
            budget = default_cache_budget_bytes(self.device) if cache_budget_bytes is None else cache_budget_bytes
            fitting = self._batches_within(budget)
        if method == "auto":
            trials: dict[str, BatchProduct] = {
                "double_backward": lambda b, v: self._product_via_graph(
                    self.objective.first_order_graph(*b), v, keep=False
                ),
                "forward_over_reverse": self._product_forward_over_reverse,
            }
            if fitting > 0:
                with curvature_kernels():
                    first_graph = self.objective.first_order_graph(*objective.batches[0])
                graph = first_graph
                trials = {"cached_double_backward": lambda b, v: self._product_via_graph(graph, v, keep=True), **trials}
            method = cast(HvpMethod, self._fastest(trials, may_compile))
        self.method = method
        self.cached_batches = fitting if method == "cached_double_backward" else 0
        with curvature_kernels():
            self._cache = [
                first_graph if i == 0 and first_graph is not None else self.objective.first_order_graph(*batch)
                for i, batch in enumerate(objective.batches[: self.cached_batches])
            ]

    @property
    def compile_warning(self) -> str | None:
        """The result's sentence on a failed compile: what failed, and the product that ran instead."""
        if self.compile_failure is None:
            return None
        return (
            f"the compiled {self.curvature.replace('_', '-')} product could not be compiled ({self.compile_failure}); "
            f"the solve used the eager {self.method} product"
        )

    @property
    def size(self) -> int:
        return self.objective.space.size

    def saved_bytes_per_sample(self) -> float:
        """Memory a cached first-order graph holds per sample, measured on the largest batch."""
        x, y, w = max(self.objective.batches, key=lambda b: b[0].shape[0])
        return self.objective.graph_bytes(x, y, w) / x.shape[0]

    def _batches_within(self, budget: int) -> int:
        """How many leading batches' first-order graphs fit in ``budget`` bytes."""
        per_sample, fitting, samples = self.saved_bytes_per_sample(), 0, 0
        for x, _, _ in self.objective.batches:
            if (samples + x.shape[0]) * per_sample > budget:
                break
            samples += x.shape[0]
            fitting += 1
        return fitting

    def _fastest(self, trials: dict[str, BatchProduct], may_compile: bool) -> str:
        """Time one product of each implementation that works here on the first batch, the compiled one too where
        ``may_compile`` and the solve would repay compiling it: the fastest."""
        batch = self.objective.batches[0]
        like = next(iter(self.objective.params.values()))  # the parameters' dtype and device, not the data's
        # any vector times the products alike; a seeded CPU draw leaves torch's global random state untouched
        probe = torch.randn(self.size, generator=torch.Generator().manual_seed(0), dtype=like.dtype)
        v_parts = self.objective.space.unflatten(probe.to(like.device))
        failures: list[str] = []
        for name, product in trials.items():
            try:
                self.trial_seconds[name] = self._timed(product, batch, v_parts)
            except (RuntimeError, NotImplementedError) as exc:  # e.g. an operator without a forward-mode derivative
                failures.append(f"{name}: {str(exc).splitlines()[0]}")
        if not self.trial_seconds:
            raise RuntimeError("no Hessian-vector product works for this model: " + "; ".join(failures))
        fastest = min(self.trial_seconds, key=self.trial_seconds.__getitem__)
        eager_product_seconds = self.trial_seconds[fastest] * self._samples() / batch[0].shape[0]
        estimate = estimated_compile_seconds(forward_operators(self.objective)) if may_compile else math.inf
        if compile_repaid(self.curvature, eager_product_seconds, self.expected_products, estimate):
            compiled = self._compile([batch])
            if compiled is not None:
                self.trial_seconds[COMPILED_PRODUCT] = self._timed(compiled, batch, v_parts)
                if self.trial_seconds[COMPILED_PRODUCT] < self.trial_seconds[fastest] and self._compile(
                    self.objective.batches
                ):
                    return COMPILED_PRODUCT
                self._compiled = None
        return fastest

    def _timed(self, product: BatchProduct, batch: ObjectiveBatch, v_parts: dict[str, torch.Tensor]) -> float:
        with curvature_kernels():
            synchronize(self.device)
            start = time.perf_counter()
            product(batch, v_parts)
            synchronize(self.device)
        return time.perf_counter() - start

    def _samples(self) -> int:
        return sum(x.shape[0] for x, _, _ in self.objective.batches)

    def _compile(self, batches: list[ObjectiveBatch]) -> CompiledProduct | None:
        """The compiled product, compiled for every batch shape in ``batches`` (its time added to
        ``compile_seconds``), or None with ``compile_failure`` set where compiling fails."""
        if self.compile_failure is not None:
            return None
        compiled = self._compiled or CompiledProduct(self.objective, self.curvature)
        before = compiled.seconds
        try:
            with curvature_kernels():
                compiled.prepare(batches)
        except Exception as exc:  # noqa: BLE001 - whatever compiling raises, the eager products still work
            self._compiled = None
            self.compile_failure = _first_cause(exc)
            return None
        finally:
            self.compile_seconds += compiled.seconds - before
        self._compiled = compiled
        return compiled

    def _graphs(self) -> Iterator[tuple[Graph, bool]]:
        """(first-order graph, keep it) per batch: the cached ones, then the others rebuilt one at a time."""
        for graph in self._cache:
            yield graph, True
        for x, y, w in self.objective.batches[self.cached_batches :]:
            yield self.objective.first_order_graph(x, y, w), False

    def _product_via_graph(self, graph: Graph, v_parts: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
        """One batch's Hessian-vector product by differentiating its first-order graph once more."""
        grads, inputs, used = graph
        if not grads:
            return {}
        names = list(v_parts)
        hv = torch.autograd.grad(
            grads, inputs, grad_outputs=[v_parts[names[i]] for i in used], retain_graph=keep, allow_unused=True
        )
        return {names[i]: h for i, h in zip(used, hv) if h is not None}

    def _product_forward_over_reverse(
        self, batch: tuple[torch.Tensor, torch.Tensor, float], v_parts: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        x, y, w = batch
        grad_fn = grad(lambda p: self.objective.batch_loss(p, x, y, w))
        product: dict[str, torch.Tensor] = jvp(grad_fn, (self.objective.params,), (v_parts,))[1]
        return product

    def _tangents_of(self, v_parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The vector copied into tensors of their own, one per parameter, kept for the next product: ``make_dual``
        takes such a tangent as it is, but copies a view of the flat vector into a fresh zeroed tensor at every batch
        (on a ResNet-18, a tenth of the batch's product)."""
        if not self._tangents:
            self._tangents = {name: torch.empty_like(p) for name, p in self.objective.params.items()}
        for name, tangent in self._tangents.items():
            tangent.copy_(v_parts[name])
        return self._tangents

    def _product_gauss_newton(
        self, batch: tuple[torch.Tensor, torch.Tensor, float], v_parts: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One batch's Jᵀ H_out J v: the outputs and their tangent J v in one forward pass (forward-mode AD on
        parameters that autograd also records), H_out J v by differentiating the loss twice in the outputs only,
        and Jᵀ of that by one backward pass through the recorded forward."""
        x, y, w = batch
        leaves = self.objective.leaf_params()
        with forward_ad.dual_level():
            duals = {name: forward_ad.make_dual(p, v_parts[name]) for name, p in leaves.items()}
            outputs, tangent = forward_ad.unpack_dual(
                functional_call(self.objective.model, {**duals, **self.objective.buffers}, (x,))
            )
        if tangent is None:  # the outputs do not depend on the parameters
            return {}
        at = outputs.detach().requires_grad_()
        (loss_gradient,) = torch.autograd.grad(w * self.objective.loss_fn(at, y), at, create_graph=True)
        (h_out_jv,) = torch.autograd.grad(loss_gradient, at, grad_outputs=tangent.detach())
        names = list(leaves)
        jt = torch.autograd.grad(outputs, list(leaves.values()), grad_outputs=h_out_jv, allow_unused=True)
        return {name: g for name, g in zip(names, jt) if g is not None}

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        space = self.objective.space
        v_parts = space.unflatten(v)
        total = space.zeros(v)
        parts = space.unflatten(total)
        with curvature_kernels():
            if self._compiled is not None:
                compiled = self._compiled
                products = (compiled(batch, v_parts) for batch in self.objective.batches)
            elif self.method == GAUSS_NEWTON_PRODUCT:
                tangents = self._tangents_of(v_parts)
                products = (self._product_gauss_newton(batch, tangents) for batch in self.objective.batches)
            elif self.method == "forward_over_reverse":
                products = (self._product_forward_over_reverse(batch, v_parts) for batch in self.objective.batches)
            else:
                products = (self._product_via_graph(graph, v_parts, keep) for graph, keep in self._graphs())
            for product in products:
                for name, h in product.items():
                    parts[name] += h
        if self.damping:
            total.add_(v, alpha=self.damping)
        self.count += 1
        self.seconds += time.perf_counter() - start
        ensure_finite(total, "the curvature-vector product contains NaN or Inf")
        return total
