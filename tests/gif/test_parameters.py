"""The flat parameter space: every parameter at its offset, views back into the flat vector, the layers' mask."""

import pytest
import torch
from torch import nn

from gif.errors import NonFiniteError
from gif.instrumentation import find_layers
from gif.parameters import ParameterSpace, ensure_finite, layer_mask, model_buffers, model_parameters


def test_every_parameter_has_its_offset_and_the_mask_covers_the_layers_only():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)).eval()
    space = ParameterSpace.of(model)
    assert space.names == ("0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias")
    assert space.offsets == (0, 6, 8, 10, 12, 14) and space.size == 15
    assert space.slice_of("2.weight") == slice(12, 14) and space.shape_of("0.weight") == (2, 3)
    mask = layer_mask(space, find_layers(model, torch.randn(2, 3)))
    assert mask.tolist() == [True] * 8 + [False] * 4 + [True] * 3  # BatchNorm keeps its place, never moves
    assert set(model_buffers(model)) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}


def test_flatten_and_unflatten_are_inverse_and_unflatten_gives_views():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    space = ParameterSpace.of(model)
    flat = space.flatten(model_parameters(model))
    assert flat.shape == (space.size,) and torch.equal(flat[6:8], model[0].bias.detach())
    views = space.unflatten(flat)
    assert all(torch.equal(views[n], p) for n, p in model.named_parameters())
    flat[space.slice_of("1.weight")] = 7.0
    assert (views["1.weight"] == 7.0).all() and torch.equal(space.flatten(views), flat)
    assert space.zeros(flat.double()).dtype == torch.float64 and not space.zeros(flat).any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_nan_or_an_infinity_anywhere_is_refused(bad):
    vector = torch.ones(1000)
    vector[617] = bad
    with pytest.raises(NonFiniteError, match="the step"):
        ensure_finite(vector, "the step")


def test_finite_values_whose_sum_overflows_are_accepted():
    """The fast test sums the vector; huge finite elements overflow the sum, and are still finite."""
    vector = torch.full((4,), 3e38)
    assert not torch.isfinite(vector.sum())
    ensure_finite(vector, "the step")
    ensure_finite(torch.zeros(0), "the step")
