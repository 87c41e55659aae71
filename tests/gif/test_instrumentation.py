"""Layers found by watching a forward pass, and their per-unit output and output-gradient means."""

import torch
import torch.nn.functional as F
from torch import nn

from gif.curvature import cross_entropy_sum
from gif.instrumentation import Layer, find_layers, unit_statistics


class Watched(nn.Module):
    """Layers registered in another order than they run, a depthwise convolution without bias, a BatchNorm, and a
    linear map whose weight is computed (not one of the model's parameters, so not a layer)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(4, 4))

    def forward(self, x):
        x = self.depthwise(torch.relu(self.norm(self.stem(x)))).mean((2, 3))
        return self.head(F.linear(x, self.scale * 2))


def test_linear_maps_and_convolutions_with_a_parameter_weight_are_the_layers_in_registration_order():
    assert find_layers(Watched().eval(), torch.randn(2, 1, 5, 5)) == [
        Layer("head", "head.weight", "head.bias", 3),
        Layer("depthwise", "depthwise.weight", None, 4),
        Layer("stem", "stem.weight", "stem.bias", 4),
    ]


def test_unit_statistics_are_the_means_over_every_batch_sample_and_position():
    model = Watched().eval()
    x, y = torch.randn(6, 1, 5, 5), torch.arange(6) % 3
    batches = [(x[:2], y[:2], 1.0), (x[2:], y[2:], 1.0)]
    layers, outputs, gradients = unit_statistics(model, batches, cross_entropy_sum, with_gradients=True)
    assert [layer.name for layer in layers] == ["head", "depthwise", "stem"]
    assert torch.allclose(outputs["stem"], model.stem(x).mean((0, 2, 3)).double(), atol=1e-6)
    assert torch.allclose(outputs["head"], model(x).mean(0).double(), atol=1e-6)
    bias_gradient = torch.autograd.grad(cross_entropy_sum(model(x), y), model.stem.bias)[0]
    assert torch.allclose(gradients["stem"], bias_gradient.double() / (6 * 5 * 5), atol=1e-7)
    assert outputs["stem"].dtype == torch.float64 and all(p.grad is None for p in model.parameters())
    assert unit_statistics(model, batches, cross_entropy_sum, with_gradients=False)[2] == {}
