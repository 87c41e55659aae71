import copy

import pytest
import torch

from gif.curvature import cross_entropy_sum
from gif.data import Dataset
from gif.edit import run
from gif.instrumentation import unit_statistics
from gif.models.registry import build_model
from gif.parameters import ParameterSpace
from gif.selection import CRITERIA, full_selection, select
from gif.spec import JobSpec, SelectionSpec


@pytest.fixture(scope="module")
def analysed(mnist_split):
    train, _ = mnist_split
    eights = train.subset(torch.nonzero(train.y == 8).flatten()[:128])
    return [(eights.x, eights.y, 1.0 / len(eights))]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.3, 0.5])
def test_ratio_honoured_within_one_percent(mnist_tinynet, analysed, criterion, ratio):
    spec = SelectionSpec(criterion=criterion, ratio=ratio, seed=1, threshold=0.0 if criterion == "threshold" else None)
    selection = select(mnist_tinynet, spec, analysed, cross_entropy_sum)
    assert abs(selection.modification_ratio - ratio) <= 0.01
    assert selection.num_candidates == 398_090
    again = select(mnist_tinynet, spec, analysed, cross_entropy_sum)
    assert torch.equal(selection.mask, again.mask)


def test_random_depends_on_the_seed_and_topk_does_not(mnist_tinynet, analysed):
    masks = {
        seed: select(mnist_tinynet, SelectionSpec(criterion="random", seed=seed), analysed, cross_entropy_sum).mask
        for seed in (0, 1)
    }
    assert not torch.equal(masks[0], masks[1])
    top = [select(mnist_tinynet, SelectionSpec(seed=seed), analysed, cross_entropy_sum).mask for seed in (0, 1)]
    assert torch.equal(top[0], top[1])


def test_topk_outputs_takes_the_largest_mean_outputs(mnist_tinynet, analysed):
    x, _, _ = analysed[0]
    with torch.no_grad():
        h = x
        for conv in (mnist_tinynet.conv1, mnist_tinynet.conv2, mnist_tinynet.conv3, mnist_tinynet.conv4):
            h = torch.relu(conv(h))
        fc_mean = mnist_tinynet.fc(torch.flatten(h, 1)).mean(0).abs()
        conv4_mean = (
            mnist_tinynet.conv4(
                torch.relu(mnist_tinynet.conv3(torch.relu(mnist_tinynet.conv2(torch.relu(mnist_tinynet.conv1(x))))))
            )
            .mean((0, 2, 3))
            .abs()
        )
    selection = select(mnist_tinynet, SelectionSpec(ratio=0.3), analysed, cross_entropy_sum)
    space = ParameterSpace.of(mnist_tinynet)
    fc_rows = selection.mask[space.slice_of("fc.bias")]
    assert set(torch.nonzero(fc_rows).flatten().tolist()) == set(fc_mean.topk(3).indices.tolist())
    conv4_units = selection.mask[space.slice_of("conv4.bias")]
    assert set(torch.nonzero(conv4_units).flatten().tolist()) == set(conv4_mean.topk(77).indices.tolist())
    # a unit is selected whole: its fan-in rows and its bias
    weight = selection.mask[space.slice_of("conv4.weight")].view(256, -1)
    assert torch.equal(weight.all(1), conv4_units) and torch.equal(weight.any(1), conv4_units)


def test_threshold_only_picks_units_above_it(mnist_tinynet, analysed):
    _, outputs, _ = unit_statistics(mnist_tinynet, analysed, cross_entropy_sum, with_gradients=False)
    threshold = float(outputs["conv4"].abs().median())
    selection = select(
        mnist_tinynet, SelectionSpec(criterion="threshold", ratio=0.3, threshold=threshold), analysed, cross_entropy_sum
    )
    space = ParameterSpace.of(mnist_tinynet)
    chosen = torch.nonzero(selection.mask[space.slice_of("conv4.bias")]).flatten()
    assert len(chosen) == 77 and bool((outputs["conv4"].abs()[chosen] > threshold).all())


def chosen_units(model, spec, batches, layer: str) -> list[int]:
    """The units of ``layer`` (an nn.Linear or nn.Conv of ``model``) that ``select`` chooses."""
    selection = select(model, spec, batches, cross_entropy_sum)
    return torch.nonzero(selection.mask[ParameterSpace.of(model).slice_of(f"{layer}.bias")]).flatten().tolist()


def in_batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    return [(x[i : i + size], y[i : i + size], 1.0) for i in range(0, len(x), size)]


@pytest.mark.parametrize("seed", range(5))
def test_units_with_equal_scores_are_chosen_alike_in_any_summation_order_and_precision(seed):
    """Two units fed the same values in another order have equal mean outputs, which float32 sums round apart, one
    way or the other with the summation order (a CUDA reduction sums in another order than the CPU's): the
    selection must not follow that rounding but give the tie to the lower index, on any device."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(1000, generator=generator)
    x = torch.stack([values, values[torch.randperm(1000, generator=generator)]], 1)
    y = torch.arange(1000) % 2
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    spec = SelectionSpec(ratio=0.5)
    assert chosen_units(model, spec, in_batches(x, y, 1000), "0") == [0]
    assert chosen_units(model, spec, in_batches(x, y, 7), "0") == [0]
    assert chosen_units(model.double(), spec, in_batches(x.double(), y, 1000), "0") == [0]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_a_trained_net_selects_the_same_units_in_float64_and_in_other_batches(mnist_tinynet, analysed, criterion):
    """What differs between devices, float rounding and summation order, does not change the selection."""
    spec = SelectionSpec(criterion=criterion, ratio=0.1, seed=3)
    x, y, w = analysed[0]
    reference = select(mnist_tinynet, spec, analysed, cross_entropy_sum).mask
    reordered = [(x[i : i + 32].flip(0), y[i : i + 32].flip(0), w) for i in reversed(range(0, len(x), 32))]
    assert torch.equal(select(mnist_tinynet, spec, reordered, cross_entropy_sum).mask, reference)
    in_float64 = copy.deepcopy(mnist_tinynet).double()
    assert torch.equal(select(in_float64, spec, [(x.double(), y, w)], cross_entropy_sum).mask, reference)


@pytest.mark.parametrize("criterion", ["topk_outputs", "topk_gradients"])
def test_tied_scores_go_to_the_lower_index(criterion):
    """Units 2–5 are copies (equal scores), units 0 and 1 are dead (scores exactly 0): the copies come first, in
    index order, then the dead units, lower index first."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight[:2] = 0.0
        model[0].bias[:2] = 0.0
        model[0].weight[2:] = model[0].weight[2]
        model[0].bias[2:] = 1.0
        model[2].weight[:] = model[2].weight[:, :1]  # every hidden unit reaches the logits alike
    x, y = torch.randn(64, 4), torch.arange(64) % 3
    assert chosen_units(model, SelectionSpec(criterion=criterion, ratio=0.5), [(x, y, 1.0)], "0") == [2, 3, 4]
    assert chosen_units(model, SelectionSpec(criterion=criterion, ratio=0.84), [(x, y, 1.0)], "0") == [0, 2, 3, 4, 5]


@pytest.mark.parametrize("criterion", ["random", "threshold"])
def test_random_draws_depend_on_the_seed_only(mnist_tinynet, analysed, criterion):
    """The criteria draw from a CPU generator seeded by the spec: torch's global random state plays no part."""
    spec = SelectionSpec(criterion=criterion, seed=5)
    masks = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        masks.append(select(mnist_tinynet, spec, analysed, cross_entropy_sum).mask)
    assert torch.equal(masks[0], masks[1])


def test_a_unit_crossing_the_threshold_changes_one_choice_at_most(mnist_tinynet, analysed):
    """A score on either side of the threshold on two devices must not reshuffle the other random choices."""
    _, outputs, _ = unit_statistics(mnist_tinynet, analysed, cross_entropy_sum, with_gradients=False)
    scores = outputs["conv4"].abs().sort().values
    chosen = [
        set(chosen_units(mnist_tinynet, SelectionSpec(criterion="threshold", threshold=float(t)), analysed, "conv4"))
        for t in scores[128:130]  # the unit of the score at 129 is eligible, then it is not
    ]
    assert len(chosen[0]) == 26 and len(chosen[0] ^ chosen[1]) <= 2


def test_batchnorm_is_never_selected_but_counts_in_offsets():
    model = build_model({"name": "vgg11", "config": {"in_channels": 3}})
    x = torch.randn(4, 3, 32, 32)
    selection = select(model, SelectionSpec(ratio=0.5), [(x, torch.tensor([0, 1, 2, 3]), 0.25)], cross_entropy_sum)
    space = ParameterSpace.of(model)
    for name in space.names:
        if ".1." in name:  # features.1 is the first BatchNorm
            assert not selection.mask[space.slice_of(name)].any()
    assert selection.mask.numel() == sum(p.numel() for p in model.parameters())
    assert not (selection.mask & ~selection.candidates).any()
    assert full_selection(model, x[:1]).modification_ratio == 1.0


def test_topk_gradients_uses_the_output_gradient(mnist_tinynet, analysed):
    _, _, grads = unit_statistics(mnist_tinynet, analysed, cross_entropy_sum, with_gradients=True)
    x, y, w = analysed[0]
    logits = mnist_tinynet(x).detach().requires_grad_()
    (w * cross_entropy_sum(logits, y)).backward()
    assert torch.allclose(grads["fc"], logits.grad.mean(0).double(), atol=1e-7)
    selection = select(mnist_tinynet, SelectionSpec(criterion="topk_gradients", ratio=0.3), analysed, cross_entropy_sum)
    space = ParameterSpace.of(mnist_tinynet)
    fc_rows = torch.nonzero(selection.mask[space.slice_of("fc.bias")]).flatten()
    assert set(fc_rows.tolist()) == set(logits.grad.mean(0).abs().topk(3).indices.tolist())


class AttentionClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.attention = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        tokens = self.embed(x.view(-1, 4, 8))
        return self.head(self.norm(self.attention(tokens, tokens, tokens, need_weights=False)[0]).mean(1))


def test_attention_input_projection_rows_are_units_with_exact_statistics():
    """The packed q/k/v projection is a layer of 3·E units; its statistics are those of F.linear on the query."""
    torch.manual_seed(0)
    model = AttentionClassifier().eval()
    x, y = torch.randn(6, 32), torch.arange(6) % 3
    layers, outputs, grads = unit_statistics(model, [(x, y, 1.0)], cross_entropy_sum, with_gradients=True)
    assert [layer.name for layer in layers] == ["embed", "attention.in_proj", "head"]  # out_proj runs inside MHA
    assert layers[1].units == 48 and layers[1].parameters == ("attention.in_proj_weight", "attention.in_proj_bias")
    tokens = model.embed(x.view(-1, 4, 8))
    projection = torch.nn.functional.linear(tokens, model.attention.in_proj_weight, model.attention.in_proj_bias)
    assert torch.allclose(outputs["attention.in_proj"], projection.mean((0, 1)).double(), atol=1e-6)
    bias_grad = torch.autograd.grad(cross_entropy_sum(model(x), y), model.attention.in_proj_bias)[0]
    assert torch.allclose(grads["attention.in_proj"], bias_grad.double() / 24, atol=1e-6)  # 6 samples × 4 tokens


@pytest.mark.parametrize("criterion", ["topk_outputs", "topk_gradients"])
def test_attention_edits_move_selected_projection_rows_only(criterion):
    torch.manual_seed(0)
    model = AttentionClassifier()
    data = Dataset(torch.randn(60, 32), torch.arange(60) % 3)
    spec = JobSpec.model_validate(
        {
            "request": {"kind": "remove_class", "classes": [0]},
            "selection": {"criterion": criterion, "ratio": 0.25},
            "step": {"mode": "fixed", "scale": 1.0},
            "solver": {"max_iterations": 3},
        }
    )
    outcome = run(spec, model, data, data)
    layers = {layer.module: layer for layer in outcome.result.selection.layers}
    assert set(layers) == {"embed", "attention.in_proj", "head"}
    assert layers["attention.in_proj"].units_selected == 12
    before, after = model.state_dict(), outcome.state_dict
    moved_rows = (before["attention.in_proj_weight"] != after["attention.in_proj_weight"]).any(1)
    assert 0 < int(moved_rows.sum()) <= 12
    for frozen in ("attention.out_proj.weight", "norm.weight", "norm.bias"):
        assert torch.equal(after[frozen], before[frozen])
