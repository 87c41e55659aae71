import pytest
import torch

from gif.curvature import HessianOperator, LossTerm, ModelObjective, curvature_kernels
from gif.data import Dataset
from gif.errors import NonFiniteError

METHODS = ["forward_over_reverse", "double_backward", "cached_double_backward"]


@pytest.fixture(scope="module")
def objective(tanh_mlp, digits_double):
    sample = digits_double.subset(torch.arange(300))
    return ModelObjective(tanh_mlp, [LossTerm(sample, 1 / len(sample))], batch_size=64)


@pytest.mark.parametrize("method", METHODS)
def test_every_hvp_matches_the_dense_hessian(objective, dense_hessian, method):
    H = dense_hessian(objective)
    v = torch.randn(objective.space.size, dtype=torch.float64)
    op = HessianOperator(objective, damping=0.01, method=method)
    assert op.method == method
    expected = H @ v + 0.01 * v
    assert torch.allclose(op(v), expected, rtol=1e-9, atol=1e-11)
    assert torch.allclose(op(2 * v), 2 * expected, rtol=1e-9, atol=1e-11)  # no state leaks between products
    assert op.count == 2


def test_hvp_is_batch_size_invariant(tanh_mlp, digits_double):
    sample = digits_double.subset(torch.arange(300))
    v = torch.randn(1210, dtype=torch.float64)
    products = [
        HessianOperator(ModelObjective(tanh_mlp, [LossTerm(sample, 1 / 300)], batch_size=b))(v) for b in (7, 64, 300)
    ]
    assert torch.allclose(products[0], products[1], rtol=1e-10, atol=1e-12)
    assert torch.allclose(products[0], products[2], rtol=1e-10, atol=1e-12)


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
