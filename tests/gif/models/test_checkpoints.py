"""Checkpoints checked against an architecture key by key and loaded strictly."""

import pytest
import torch

from gif.errors import InvalidWeightsError
from gif.models.checkpoints import load_weights
from gif.models.registry import build_model


def test_load_weights_reports_every_problem_at_once():
    model = build_model({"name": "tinynet", "config": {}})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["conv2.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(3, 3)
    state["fc.bias"] = torch.full((10,), float("nan"))
    state["conv3.weight"] = state["conv3.weight"].long()
    with pytest.raises(InvalidWeightsError) as info:
        load_weights(model, state)
    text = str(info.value)
    assert len(info.value.problems) == 5
    for fragment in ("conv2.bias", "extra.weight", "conv1.weight", "fc.bias: contains NaN", "conv3.weight: dtype"):
        assert fragment in text


def test_load_weights_roundtrip_and_batchnorm_buffers_required():
    source = build_model({"name": "vgg11", "config": {"in_channels": 3}})
    target = build_model({"name": "vgg11", "config": {"in_channels": 3}})
    load_weights(target, source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    partial = {k: v for k, v in source.state_dict().items() if "running_var" not in k}
    with pytest.raises(InvalidWeightsError, match="running_var"):
        load_weights(target, partial)
    no_counter = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_weights(target, no_counter)
