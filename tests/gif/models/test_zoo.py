"""The zoos by name (torchvision, timm): registry entries, configs checked on the meta device, edits end to end."""

import pytest
import torch
import torchvision

from gif.data import Dataset
from gif.edit import run
from gif.errors import UnknownArchitectureError
from gif.models.registry import REGISTRY, architectures, build_model, parameter_listing, resolve
from gif.spec import JobSpec


def test_every_torchvision_classifier_is_an_entry():
    names = torchvision.models.list_models(module=torchvision.models)
    assert {f"torchvision.{n}" for n in names} <= set(REGISTRY)
    listing = parameter_listing({"name": "torchvision.resnet18", "config": {"num_classes": 10}})
    model = torchvision.models.resnet18(num_classes=10)
    assert [p["name"] for p in listing["parameters"]] == [n for n, _ in model.named_parameters()]
    assert listing["num_parameters"] == sum(p.numel() for p in model.parameters())


def test_the_builders_keyword_arguments_are_accepted_and_unknown_ones_named():
    _, config = resolve({"name": "torchvision.mobilenet_v3_small", "config": {"num_classes": 5, "dropout": 0.1}})
    assert config.model_dump() == {"num_classes": 5, "dropout": 0.1}
    with pytest.raises(UnknownArchitectureError, match="unexpected keyword argument 'wingspan'"):
        resolve({"name": "torchvision.resnet18", "config": {"num_classes": 10, "wingspan": 3}})
    with pytest.raises(UnknownArchitectureError, match="num_classes"):
        resolve({"name": "torchvision.resnet18", "config": {"num_classes": 1}})


def test_timm_architectures_are_entries_made_on_first_use():
    import timm

    entries = architectures("timm")
    assert {a.name for a in entries} == {f"timm.{m}" for m in timm.list_models()}
    listing = parameter_listing({"name": "timm.test_vit", "config": {"num_classes": 4}})
    model = timm.create_model("test_vit", pretrained=False, num_classes=4)
    assert [p["name"] for p in listing["parameters"]] == [n for n, _ in model.named_parameters()]
    with pytest.raises(UnknownArchitectureError, match="unexpected keyword argument 'wingspan'"):
        resolve({"name": "timm.test_vit", "config": {"num_classes": 4, "wingspan": 3}})
    with pytest.raises(UnknownArchitectureError, match="unknown architecture 'timm.no_such_net'"):
        resolve({"name": "timm.no_such_net", "config": {}})


@pytest.mark.parametrize(
    "name",
    [
        "torchvision.resnet18",
        "torchvision.mobilenet_v3_small",
        "timm.test_vit",
        "timm.test_convnext",
        "timm.test_efficientnet",
    ],
)
def test_a_class_removal_runs_end_to_end_on_a_torchvision_model(name):
    torch.manual_seed(0)
    model = build_model({"name": name, "config": {"num_classes": 4}})
    data = Dataset(torch.randn(96, 3, 32, 32), torch.arange(96) % 4)
    spec = JobSpec.model_validate(
        {
            "request": {"kind": "remove_class", "classes": [1]},
            "step": {"mode": "fixed", "scale": 1.0},
            "solver": {"max_iterations": 3, "hessian_samples": 32, "gradient_samples": 16, "batch_size": 16},
        }
    )
    outcome = run(spec, model, data, data)
    original = model.state_dict()
    changed = sum(int((outcome.state_dict[k] != original[k]).sum()) for k in original)
    assert 0 < changed <= outcome.result.selection.num_selected
    assert abs(outcome.result.selection.modification_ratio - 0.1) <= 0.02
    assert outcome.result.solver.iterations >= 1 and outcome.result.metrics.after


TINY_TORCHVISION = {  # the families' own torchvision classes at sizes a test affords
    "ViT (nn.MultiheadAttention)": lambda: torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    ),
    "Swin (shifted windows, F.linear qkv)": lambda: torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=4
    ),
}


@pytest.mark.parametrize("family", sorted(TINY_TORCHVISION))
def test_attention_families_edit_end_to_end(family):
    torch.manual_seed(0)
    model = TINY_TORCHVISION[family]().eval()
    data = Dataset(torch.randn(48, 3, 32, 32), torch.arange(48) % 4)
    spec = JobSpec.model_validate(
        {
            "request": {"kind": "remove_class", "classes": [1]},
            "selection": {"ratio": 0.25},
            "step": {"mode": "fixed", "scale": 1.0},
            "solver": {"max_iterations": 3, "hessian_samples": 24, "gradient_samples": 12, "batch_size": 12},
        }
    )
    outcome = run(spec, model, data, data)
    original = model.state_dict()
    moved = {k for k in original if not torch.equal(outcome.state_dict[k], original[k])}
    changed = sum(int((outcome.state_dict[k] != original[k]).sum()) for k in original)
    assert 0 < changed <= outcome.result.selection.num_selected
    assert not any("norm" in k or k.endswith(("class_token", "pos_embedding")) for k in moved), moved
    layers = {layer.module for layer in outcome.result.selection.layers}
    if family.startswith("ViT"):
        assert {f"encoder.layers.encoder_layer_{i}.self_attention.in_proj" for i in (0, 1)} <= layers
    if family.startswith("Swin"):
        assert any(name.endswith("attn.qkv") for name in layers)
