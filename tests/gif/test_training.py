"""Training from scratch: seeded initialisation and the paper's recipe."""

import copy

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


def test_training_is_seeded_reports_every_epoch_and_learns(digits):
    from gif.spec import RetrainSpec
    from gif.training import reinitialised, train

    data = digits.subset(range(256))
    start = reinitialised(build_model({"name": "mlp", "config": {"sizes": [64, 16, 10]}}), 0)

    def trained(seed: int, epochs: int = 1, events: list | None = None):
        recipe = RetrainSpec(epochs=epochs, batch_size=32, lr=0.2, seed=seed)
        return train(copy.deepcopy(start), data, recipe, None if events is None else lambda *e: events.append(e))

    once = trained(0)
    assert all(torch.equal(a, b) for a, b in zip(once.parameters(), trained(0).parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(once.parameters(), trained(1).parameters()))  # the shuffle
    events: list = []
    model = trained(0, 8, events)
    assert events == [(e, 8) for e in range(1, 9)] and not model.training

    @torch.no_grad()
    def loss(m):
        return float(torch.nn.functional.cross_entropy(m(data.x), data.y))

    assert loss(model) < 0.5 * loss(start)
