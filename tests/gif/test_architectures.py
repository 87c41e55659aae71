import pytest
import torch

from gif.errors import InvalidWeightsError, UnknownArchitectureError
from gif.models.checkpoints import load_weights, read_checkpoint
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


def test_paper_shapes():
    resnet = build_model({"name": "resnet18", "config": {}})
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1) and resnet.conv1.bias is None
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    assert build_model({"name": "tinynet", "config": {}})(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model({"name": "vgg11", "config": {"in_channels": 3}})(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


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


def test_read_checkpoint_formats(tmp_path):
    model = build_model({"name": "mlp", "config": {"sizes": [4, 3]}})
    zip_path = tmp_path / "model.pt"
    torch.save(model.state_dict(), zip_path)
    assert set(read_checkpoint(zip_path)) == {"layers.0.weight", "layers.0.bias"}

    legacy = tmp_path / "legacy.pt"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(InvalidWeightsError, match="pickle"):
        read_checkpoint(legacy)

    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, nested)
    with pytest.raises(InvalidWeightsError, match="flat state dict"):
        read_checkpoint(nested)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": Evil()}, evil)
    with pytest.raises(InvalidWeightsError):
        read_checkpoint(evil)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(InvalidWeightsError):
        read_checkpoint(garbage)


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
