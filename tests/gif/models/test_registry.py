import pytest

from gif.errors import UnknownArchitectureError
from gif.models.registry import REGISTRY, build_model, parameter_listing


@pytest.mark.parametrize(
    "name, config, expected",
    [
        ("tinynet", {"in_channels": 1, "num_classes": 10}, 398_090),
        ("resnet18", {"in_channels": 1, "num_classes": 10}, 11_172_810),
        ("vgg11", {"in_channels": 3, "num_classes": 10}, 9_231_114),
        ("mlp", {"sizes": [64, 32, 10], "activation": "tanh"}, 64 * 32 + 32 + 32 * 10 + 10),
    ],
)
def test_parameter_counts_and_forward_order(name, config, expected):
    listing = parameter_listing({"name": name, "config": config})
    assert listing["num_parameters"] == expected
    model = build_model({"name": name, "config": config})
    assert [p["name"] for p in listing["parameters"]] == [n for n, _ in model.named_parameters()]
    assert [p["shape"] for p in listing["parameters"]] == [list(p.shape) for p in model.parameters()]


def test_registry_lists_the_papers_four_and_torchvisions_classifiers():
    paper = {name for name, arch in REGISTRY.items() if arch.family == "paper"}
    assert paper == {"tinynet", "resnet18", "vgg11", "mlp"}
    assert all(name.startswith("torchvision.") for name, arch in REGISTRY.items() if arch.family == "torchvision")
    assert set(REGISTRY) == paper | {name for name, arch in REGISTRY.items() if arch.family == "torchvision"}


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "alexnet", "config": {}},
        {"name": "tinynet", "config": {"in_channels": 0}},
        {"name": "tinynet", "config": {"colour": True}},
        {"name": "mlp", "config": {"sizes": [4]}},
        {"name": "mlp", "config": {"sizes": [4, 0, 3]}},
        {"config": {}},
    ],
)
def test_bad_architectures_raise_one_typed_error(spec):
    with pytest.raises(UnknownArchitectureError):
        build_model(spec)
