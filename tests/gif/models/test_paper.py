"""The paper's networks, built as the paper describes them."""

import torch

from gif.models.registry import build_model


def test_paper_shapes():
    resnet = build_model({"name": "resnet18", "config": {}})
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1) and resnet.conv1.bias is None
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    assert build_model({"name": "tinynet", "config": {}})(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model({"name": "vgg11", "config": {"in_channels": 3}})(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
