import pytest
import torch

from gif.curvature import (
    HessianOperator,
    LossTerm,
    ModelObjective,
    compile_repaid,
    curvature_kernels,
    estimated_compile_seconds,
    fitting_batch_size,
    forward_operators,
)
from gif.data import Dataset
from gif.errors import NonFiniteError
from gif.models.registry import build_model

METHODS = ["forward_over_reverse", "double_backward", "cached_double_backward"]


@pytest.fixture(scope="module")
def objective(tanh_mlp, digits_double):
    sample = digits_double.subset(torch.arange(300))
    return ModelObjective(tanh_mlp, [LossTerm(sample, 1 / len(sample))], batch_size=64)


@pytest.fixture(scope="module")
def objective_hessian(objective, dense_hessian) -> torch.Tensor:
    return dense_hessian(objective)


@pytest.mark.parametrize("method", METHODS)
def test_every_hvp_matches_the_dense_hessian(objective, objective_hessian, method):
    H = objective_hessian
    v = torch.randn(objective.space.size, dtype=torch.float64)
    op = HessianOperator(objective, damping=0.01, method=method)
    assert op.method == method
    expected = H @ v + 0.01 * v
    assert torch.allclose(op(v), expected, rtol=1e-9, atol=1e-11)
    assert torch.allclose(op(2 * v), 2 * expected, rtol=1e-9, atol=1e-11)  # no state leaks between products
    assert op.count == 2


def test_hvp_is_batch_size_invariant(tanh_mlp, digits_double, monkeypatch):
    sample = digits_double.subset(torch.arange(300))
    v = torch.randn(1210, dtype=torch.float64)
    objectives = [ModelObjective(tanh_mlp, [LossTerm(sample, 1 / 300)], batch_size=b) for b in (7, 64, 300)]
    graph = objectives[-1].graph_bytes(*objectives[-1].batches[0])
    for budget in (2 * graph, graph // 4):  # auto: the whole sample, then batches that fit half a quarter of its graph
        monkeypatch.setenv("GIF_HVP_CACHE_BYTES", str(budget))
        objectives.append(ModelObjective(tanh_mlp, [LossTerm(sample, 1 / 300)], batch_size="auto"))
    assert objectives[-2].batch_size == 300 and 7 < objectives[-1].batch_size < 64
    products = [HessianOperator(objective)(v) for objective in objectives]
    for product in products[1:]:
        assert torch.allclose(products[0], product, rtol=1e-10, atol=1e-12)


def test_auto_batches_are_the_largest_that_fit_half_the_budget_split_evenly():
    def graph_bytes(n: int) -> int:  # 100 bytes of weights, 10 per example
        return 100 + 10 * n

    assert fitting_batch_size(300, graph_bytes, budget=graph_bytes(300)) == 300
    assert fitting_batch_size(300, graph_bytes, budget=graph_bytes(300) - 1) == 100  # 144 fit half: three of 100
    assert fitting_batch_size(300, graph_bytes, budget=2 * graph_bytes(70)) == 60  # 70 fit: five batches of 60
    assert fitting_batch_size(300, graph_bytes, budget=1) == 1
    assert fitting_batch_size(1, graph_bytes, budget=1) == 1


def test_the_cache_keeps_as_many_first_order_graphs_as_fit(objective):
    full = HessianOperator(objective, method="cached_double_backward")
    assert full.cached_batches == len(objective.batches) == 5
    nothing = HessianOperator(objective, method="cached_double_backward", cache_budget_bytes=1)
    assert nothing.cached_batches == 0
    two_batches = int(full.saved_bytes_per_sample() * 128) + 1
    partial = HessianOperator(objective, method="cached_double_backward", cache_budget_bytes=two_batches)
    assert partial.cached_batches == 2
    v = torch.randn(objective.space.size, dtype=torch.float64)
    for _ in range(2):  # the cached graphs survive a product
        assert torch.allclose(partial(v), full(v), rtol=1e-10, atol=1e-12)
        assert torch.allclose(nothing(v), full(v), rtol=1e-10, atol=1e-12)


def test_gradient_is_the_weighted_sum_of_terms(tanh_mlp, digits_double):
    a, b = digits_double.subset(torch.arange(10)), digits_double.subset(torch.arange(10, 30))
    both = ModelObjective(tanh_mlp, [LossTerm(a, 0.5), LossTerm(b, -2.0)]).gradient()
    separate = (
        0.5 * ModelObjective(tanh_mlp, [LossTerm(a, 1.0)]).gradient()
        - 2.0 * ModelObjective(tanh_mlp, [LossTerm(b, 1.0)]).gradient()
    )
    assert torch.allclose(both, separate, rtol=1e-10, atol=1e-12)


def test_non_finite_weights_are_detected_at_once(tanh_mlp, digits_double):
    import copy

    broken = copy.deepcopy(tanh_mlp)
    with torch.no_grad():
        broken.layers[0].weight[0, 0] = float("nan")
    objective = ModelObjective(broken, [LossTerm(Dataset(digits_double.x[:20], digits_double.y[:20]), 0.05)])
    with pytest.raises(NonFiniteError):
        objective.gradient()
    with pytest.raises(NonFiniteError):
        HessianOperator(objective, method="double_backward")(torch.ones(1210, dtype=torch.float64))


def test_auto_times_each_implementation_and_keeps_the_fastest(objective):
    op = HessianOperator(objective)
    assert set(op.trial_seconds) == set(METHODS)
    assert op.method == min(op.trial_seconds, key=op.trial_seconds.get)
    assert op.cached_batches == (5 if op.method == "cached_double_backward" else 0)
    without_cache = HessianOperator(objective, cache_budget_bytes=1)
    assert set(without_cache.trial_seconds) == {"double_backward", "forward_over_reverse"}
    v = torch.randn(objective.space.size, dtype=torch.float64)
    assert torch.allclose(op(v), without_cache(v), rtol=1e-10, atol=1e-12)


def test_timing_the_implementations_leaves_the_global_random_state_alone(objective):
    """The probe vector comes from a seeded CPU generator: an edit draws nothing from torch's global generator."""
    state = torch.get_rng_state()
    HessianOperator(objective)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_cache_budget_follows_free_memory_unless_set(monkeypatch):
    from gif.curvature import CACHE_SHARE_OF_FREE_MEMORY, default_cache_budget_bytes
    from gif.devices import available_memory_bytes

    cpu = torch.device("cpu")
    monkeypatch.delenv("GIF_HVP_CACHE_BYTES", raising=False)
    free = available_memory_bytes(cpu)
    assert free is not None and free > 0
    assert abs(default_cache_budget_bytes(cpu) - CACHE_SHARE_OF_FREE_MEMORY * free) < 0.05 * free
    monkeypatch.setenv("GIF_HVP_CACHE_BYTES", "12345")
    assert default_cache_budget_bytes(cpu) == 12345


class TinyAttention(torch.nn.Module):
    """One self-attention layer over 4 tokens of 8 features, then a linear read-out: F.scaled_dot_product_attention."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)
        self.out = torch.nn.Linear(32, 3)

    def forward(self, x):
        q, k, v = self.qkv(x.view(-1, 4, 8)).chunk(3, dim=-1)
        return self.out(torch.nn.functional.scaled_dot_product_attention(q, k, v).flatten(1))


@pytest.mark.parametrize("method", METHODS)
def test_hvp_through_attention_matches_the_dense_hessian(dense_hessian, method):
    """Fused attention kernels have no double backward (on the CPU too); curvature code runs the math kernel."""
    model = TinyAttention().double()
    data = Dataset(torch.randn(40, 32, dtype=torch.float64), torch.arange(40) % 3)
    objective = ModelObjective(model, [LossTerm(data, 1 / 40)], batch_size=16)
    v = torch.randn(objective.space.size, dtype=torch.float64)
    op = HessianOperator(objective, method=method)
    with curvature_kernels():
        dense = dense_hessian(objective)
    assert torch.allclose(op(v), dense @ v, rtol=1e-8, atol=1e-10)


def test_hvps_through_mobilenet_v3s_hardsigmoid_agree():
    """hardsigmoid's backward has no derivative; curvature code computes it as relu6(x + 3) / 6."""
    torch.manual_seed(0)
    model = build_model({"name": "torchvision.mobilenet_v3_small", "config": {"num_classes": 4}}).double()
    data = Dataset(torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.arange(6) % 4)
    objective = ModelObjective(model, [LossTerm(data, 1 / 6)], batch_size=3)
    v = torch.randn(objective.space.size, dtype=torch.float64)
    products = [HessianOperator(objective, method=m)(v) for m in ("cached_double_backward", "forward_over_reverse")]
    assert torch.allclose(products[0], products[1], rtol=1e-8, atol=1e-10)
    assert products[0].norm() > 0


def jacobian_and_output_hessian(model: torch.nn.Module, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's full Jacobian J (N × C × P, ``torch.func.jacrev``) and the cross-entropy's Hessian in the outputs,
    diag(pₙ) − pₙpₙᵀ (N × C × C)."""
    from torch.func import functional_call, jacrev

    params = {name: p.detach() for name, p in model.named_parameters()}
    jacobian = jacrev(lambda p: functional_call(model, p, (data.x,)))(params)
    n, classes = data.x.shape[0], jacobian[next(iter(params))].shape[1]
    J = torch.cat([jacobian[name].reshape(n, classes, -1) for name in params], dim=2)
    with torch.no_grad():
        p = model(data.x).softmax(-1)
    return J, torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)


@pytest.mark.parametrize(
    "architecture, sample_shape",
    [
        ({"name": "mlp", "config": {"sizes": [64, 16, 10], "activation": "tanh"}}, (64,)),
        ({"name": "tinynet", "config": {"in_channels": 1, "num_classes": 10}}, (1, 28, 28)),
    ],
)
def test_the_gauss_newton_product_is_the_dense_jacobian_products(architecture, sample_shape):
    """Jᵀ H_out J v from one forward-mode pass and one backward pass equals the product with the model's dense
    Jacobian (float64), damping included, for each vector in turn (the operator keeps its tangent tensors from one
    product to the next)."""
    torch.manual_seed(0)
    model = build_model(architecture).double().eval()
    data = Dataset(torch.randn(6, *sample_shape, dtype=torch.float64), torch.randint(0, 10, (6,)))
    objective = ModelObjective(model, [LossTerm(data, 1 / 6)], batch_size=4)
    J, h_out = jacobian_and_output_hessian(model, data)
    op = HessianOperator(objective, damping=0.01, curvature="gauss_newton")
    assert op.method == "jvp_vjp" and op.cached_batches == 0
    for _ in range(2):
        v = torch.randn(objective.space.size, dtype=torch.float64)
        expected = torch.einsum("ncp,ncd,nd->p", J, h_out, J @ v) / 6 + 0.01 * v
        assert torch.allclose(op(v), expected, rtol=1e-9, atol=1e-12)
    assert op.count == 2


def test_the_gauss_newton_matrix_is_positive_semi_definite_where_the_hessian_is_not(
    tanh_mlp, digits_double, dense_hessian
):
    sample = digits_double.subset(torch.arange(50))
    J, h_out = jacobian_and_output_hessian(tanh_mlp, sample)
    objective = ModelObjective(tanh_mlp, [LossTerm(sample, 1 / 50)], batch_size=64)
    G = torch.einsum("ncp,ncd,ndq->pq", J, h_out, J) / 50
    H = dense_hessian(objective)
    assert torch.linalg.eigvalsh(G).min() > -1e-10 and torch.linalg.eigvalsh(H).min() < -1e-6
    op = HessianOperator(objective, curvature="gauss_newton")
    assert torch.allclose(torch.stack([op(e) for e in torch.eye(op.size, dtype=torch.float64)[:20]]), G[:20])


@pytest.mark.parametrize(
    "architecture, sample_shape",
    [
        ({"name": "vgg11", "config": {"in_channels": 1, "num_classes": 4}}, (1, 32, 32)),
        ({"name": "resnet18", "config": {"in_channels": 1, "num_classes": 4}}, (1, 8, 8)),
    ],
)
def test_the_gauss_newton_product_on_batchnorm_nets_is_torch_funcs_jvp_then_vjp(architecture, sample_shape):
    """VGG-11 and ResNet-18 (BatchNorm in eval mode) are too large for a dense Jacobian in a CPU test: the product
    is checked against torch.func's own jvp and vjp composed around the cross-entropy's output Hessian."""
    from torch.func import functional_call, jvp, vjp

    torch.manual_seed(0)
    model = build_model(architecture).double().eval()
    data = Dataset(torch.randn(2, *sample_shape, dtype=torch.float64), torch.randint(0, 4, (2,)))
    objective = ModelObjective(model, [LossTerm(data, 0.5)], batch_size=2)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    v = torch.randn(objective.space.size, dtype=torch.float64)

    def outputs(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, {**p, **buffers}, (data.x,))

    logits, jv = jvp(outputs, (params,), (objective.space.unflatten(v),))
    p = logits.softmax(-1)
    _, pullback = vjp(outputs, params)
    (expected,) = pullback(0.5 * (p * jv - p * (p * jv).sum(-1, keepdim=True)))
    product = HessianOperator(objective, curvature="gauss_newton")(v)
    assert torch.allclose(product, objective.space.flatten(expected), rtol=1e-9, atol=1e-12)


def test_the_gauss_newton_matrix_is_the_hessian_of_a_model_linear_in_its_parameters(digits_double, dense_hessian):
    """The Gauss-Newton matrix drops only Σ ∂ℓ/∂f · ∇²f, which is zero for softmax regression."""
    model = build_model({"name": "mlp", "config": {"sizes": [64, 10]}}).double().eval()
    sample = digits_double.subset(torch.arange(200))
    objective = ModelObjective(model, [LossTerm(sample, 1 / 200)], batch_size=64)
    v = torch.randn(objective.space.size, dtype=torch.float64)
    expected = dense_hessian(objective) @ v
    assert torch.allclose(HessianOperator(objective, curvature="gauss_newton")(v), expected, rtol=1e-9, atol=1e-12)


def test_the_gauss_newton_product_is_eager_or_compiled(objective):
    with pytest.raises(ValueError, match="jvp_vjp or compiled, not double_backward"):
        HessianOperator(objective, method="double_backward", curvature="gauss_newton")


@pytest.fixture(scope="module")
def compile_objective(tanh_mlp, digits_double):
    """40 examples in one batch: one shape to compile for (compiling on the CPU takes seconds per shape)."""
    sample = digits_double.subset(torch.arange(40))
    return ModelObjective(tanh_mlp, [LossTerm(sample, 1 / len(sample))], batch_size=40)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_the_compiled_product_is_the_eager_product_and_the_dense_matrix(compile_objective, dense_hessian, curvature):
    """torch.compile of the torch.func product (float64) against the eager product and the dense
    Hessian, or the dense Gauss-Newton matrix Jᵀ H_out J built from the Jacobian."""
    objective = compile_objective
    v = torch.randn(objective.space.size, dtype=torch.float64)
    if curvature == "hessian":
        dense = dense_hessian(objective)
        eager = HessianOperator(objective, damping=0.01, method="double_backward")
    else:
        sample = Dataset(
            torch.cat([x for x, _, _ in objective.batches]), torch.cat([y for _, y, _ in objective.batches])
        )
        J, h_out = jacobian_and_output_hessian(objective.model, sample)
        dense = torch.einsum("ncp,ncd,ndq->pq", J, h_out, J) / len(sample)
        eager = HessianOperator(objective, damping=0.01, curvature=curvature)
    compiled = HessianOperator(objective, damping=0.01, method="compiled", curvature=curvature)
    assert compiled.method == "compiled" and compiled.compile_failure is None and compiled.compile_warning is None
    assert compiled.compile_seconds > 0
    expected = dense @ v + 0.01 * v
    for scale in (1.0, -3.0):  # the compiled graph holds no state from one product to the next
        product = compiled(scale * v)
        assert torch.allclose(product, scale * expected, rtol=1e-9, atol=1e-11)
        assert torch.allclose(product, eager(scale * v), rtol=1e-10, atol=1e-12)
    assert compiled.count == 2


def test_auto_compiles_only_where_the_solve_repays_it(compile_objective):
    """A short solve (4 products) never pays a compile of seconds, nor does any Hessian solve (its compiled product
    saved nothing on the CPU); an endless Gauss-Newton solve tries the compiled product in the trial (reusing the
    compiled code of the test above where it ran first), keeps the faster, and reports the compile time."""
    estimate = estimated_compile_seconds(forward_operators(compile_objective))
    short = HessianOperator(compile_objective, curvature="gauss_newton", expected_products=4)
    assert set(short.trial_seconds) == {"jvp_vjp"} and short.compile_seconds == 0.0 and short.method == "jvp_vjp"
    assert not compile_repaid("gauss_newton", short.trial_seconds["jvp_vjp"], 4, estimate)
    hessian = HessianOperator(compile_objective, expected_products=10**9)
    assert "compiled" not in hessian.trial_seconds and hessian.compile_seconds == 0.0
    endless = HessianOperator(compile_objective, curvature="gauss_newton", expected_products=10**9)
    assert set(endless.trial_seconds) == {"jvp_vjp", "compiled"} and endless.compile_seconds > 0
    assert endless.method == min(endless.trial_seconds, key=endless.trial_seconds.get)
    v = torch.randn(compile_objective.space.size, dtype=torch.float64)
    assert torch.allclose(endless(v), short(v), rtol=1e-10, atol=1e-12)


class HardsigmoidGate(torch.nn.Module):
    """A linear layer gated by hardsigmoid, as in MobileNetV3's squeeze-excitation."""

    def __init__(self):
        super().__init__()
        self.gate = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.out(x * torch.nn.functional.hardsigmoid(self.gate(x)))


def test_a_hessian_product_that_cannot_be_compiled_falls_back_to_the_fastest_eager_one():
    """hardsigmoid's backward has no derivative, and under torch.compile the rewrite to relu6 is not applied: compiling
    fails for real, the operator says why once and runs the fastest eager product of the trial. (The Gauss-Newton
    product needs no second derivative of the model, and compiles.)"""
    torch.manual_seed(0)
    model = HardsigmoidGate().double().eval()
    data = Dataset(torch.randn(12, 8, dtype=torch.float64), torch.arange(12) % 3)
    objective = ModelObjective(model, [LossTerm(data, 1 / 12)], batch_size=12)
    op = HessianOperator(objective, method="compiled")
    assert op.compile_failure is not None and "hardsigmoid_backward" in op.compile_failure
    assert op.compile_warning is not None and op.compile_failure in op.compile_warning
    assert op.method in METHODS and op.method == min(op.trial_seconds, key=op.trial_seconds.get)
    assert "compiled" not in op.trial_seconds and op.compile_seconds > 0  # the failed attempt's time is reported
    v = torch.randn(objective.space.size, dtype=torch.float64)
    assert torch.allclose(op(v), HessianOperator(objective, method="double_backward")(v), rtol=1e-10, atol=1e-12)
