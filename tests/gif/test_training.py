"""Training from scratch: seeded initialisation and the paper's recipe."""

import torch

from gif.models.registry import build_model


def test_reinitialised_models_use_the_architectures_own_init():
    from gif.training import reinitialised

    model = build_model({"name": "tinynet", "config": {}})
    state = torch.get_rng_state()
    fresh = reinitialised(model, 3)
    assert torch.equal(torch.get_rng_state(), state)  # seeded draws on the CPU; the caller's random state is kept
    assert not torch.equal(fresh.conv1.weight, model.conv1.weight)
    assert torch.equal(fresh.conv1.weight, reinitialised(model, 3).conv1.weight)
    assert not fresh.fc.bias.any()  # TinyNet's He init zeroes biases; PyTorch's default would not
    fan_in = 3 * 3 * 128
    assert abs(float(fresh.conv4.weight.detach().std()) - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5
