"""A model's declared input transform: torchvision's presets replayed batch by batch, its output shape known ahead."""

import pytest
import torch
from pydantic import ValidationError
from torchvision.transforms import v2

from gif.data import Dataset
from gif.edit import run
from gif.errors import InvalidDatasetError
from gif.models.registry import build_model
from gif.models.transforms import InputTransform, apply_input_transform
from gif.spec import JobSpec, RetrainSpec
from gif.training import reinitialised, train

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("size", [(3, 40, 52), (3, 52, 40), (1, 33, 33)])
def test_the_transform_is_torchvisions_preset_on_float_images(size):
    images = torch.randint(0, 256, (4, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = images.float() / 255
    transform = InputTransform(resize=36, crop=32, mean=MEAN, std=STD, channels=3)
    preset = v2.Compose(
        [
            v2.Lambda(lambda t: t.expand(-1, 3, -1, -1)),
            v2.Resize(36, antialias=True),
            v2.CenterCrop(32),
            v2.Normalize(MEAN, STD),
        ]
    )
    expected = preset(x)
    assert transform.output_shape(list(size)) == list(expected.shape[1:])
    torch.testing.assert_close(transform(x), expected, rtol=0, atol=1e-5)


def test_grayscale_is_torchvisions_luma_and_the_identity_changes_nothing():
    x = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(InputTransform(channels=1)(x), v2.functional.rgb_to_grayscale(x), rtol=0, atol=1e-6)
    assert InputTransform(channels=1).output_shape([3, 5, 7]) == [1, 5, 7]
    assert torch.equal(InputTransform(mean=[0.0], std=[1.0])(x), x) and InputTransform().describe() == "identity"


def test_a_jobs_data_is_transformed_a_batch_at_a_time_as_it_is_fed_and_kept_as_stored():
    images = torch.randint(0, 256, (7, 1, 10, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = Dataset(images, torch.arange(7), tuple("abcdefg"))
    transform = InputTransform(resize=8, crop=8, channels=3, mean=[0.5], std=[0.25])
    fed = apply_input_transform({"train": data}, transform.model_dump(), torch.device("cpu"))["train"]
    assert fed.x is data.x and fed.y is data.y and fed.ids == data.ids
    assert fed.sample_shape == [1, 10, 12] and fed.input_shape == [3, 8, 8]
    batches = list(fed.batches(3))
    assert [len(x) for x, _ in batches] == [3, 3, 1] and torch.equal(torch.cat([y for _, y in batches]), data.y)
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), transform(images.float() / 255), rtol=0, atol=1e-6)
    assert transform.describe() == "3 channel(s) → resize 8 → centre crop 8 → normalise mean [0.5] std [0.25]"
    small = Dataset(images[..., :8, :8], data.y)
    with pytest.raises(InvalidDatasetError, match="cannot take the eval data: a centre crop of 9 does not fit in 8×8"):
        apply_input_transform({"train": data, "eval": small}, {"crop": 9}, torch.device("cpu"))
    untransformed = apply_input_transform({"train": data}, None, torch.device("meta"))["train"]
    assert untransformed.preprocessing is None and untransformed.inputs_at(slice(0, 1)).device.type == "meta"


def uint8_images(n: int, seed: int) -> Dataset:
    """Four classes of noisy 10×10 grayscale images, each class a little brighter in its own quadrant."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, 1, 10, 10, generator=generator) * 0.8
    for label, (top, left) in enumerate([(0, 0), (0, 5), (5, 0), (5, 5)]):
        x[y == label, :, top : top + 5, left : left + 5] += 0.2
    return Dataset((x * 255).round().to(torch.uint8), y)


@pytest.mark.parametrize(
    ("declared", "fed_size"),
    [
        ({"channels": 3, "resize": 9, "crop": 8, "mean": MEAN, "std": STD}, 3 * 8 * 8),
        ({"mean": [0.0], "std": [1.0]}, 100),
    ],
    ids=["resize, crop and normalise", "identity"],
)
def test_an_edit_of_uint8_images_fed_through_the_transform_is_the_edit_of_the_data_transformed_whole(
    declared, fed_size
):
    train_data, eval_data = uint8_images(240, 0), uint8_images(80, 1)
    transform = InputTransform.model_validate(declared)

    def transformed_whole(data: Dataset) -> Dataset:
        return Dataset(transform(data.x.float() / 255), data.y)

    model = reinitialised(build_model({"name": "mlp", "config": {"sizes": [fed_size, 16, 4], "activation": "relu"}}), 0)
    train(model, transformed_whole(train_data), RetrainSpec(epochs=2, batch_size=32, lr=0.1))
    spec = JobSpec.model_validate(
        {
            "request": {"kind": "remove_class", "classes": [1]},
            "solver": {"max_iterations": 5},
            "step": {"mode": "fixed", "scale": 1.0},
        }
    )
    as_stored = run(spec, model, train_data, eval_data, device="cpu", input_transform=declared)
    in_advance = run(spec, model, transformed_whole(train_data), transformed_whole(eval_data), device="cpu")
    for name, value in in_advance.state_dict.items():
        torch.testing.assert_close(as_stored.state_dict[name], value, rtol=0, atol=1e-5)
    metrics = as_stored.result.metrics
    assert metrics.after["forget_accuracy"] < metrics.before["forget_accuracy"] - 0.2  # an edit, not a no-op
    for moment in ("before", "after"):
        expected = getattr(in_advance.result.metrics, moment)
        assert getattr(metrics, moment) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"mean": [0.5]}, "together"),
        ({"mean": [0.5, 0.5], "std": [1.0]}, "2 values but std 1"),
        ({"mean": [0.5], "std": [0.0]}, "positive"),
        ({"mean": [0.1, 0.2], "std": [1.0, 1.0], "channels": 3}, "1 or 3 values"),
        ({"crop": 0}, "greater than 0"),
        ({"resize": 224, "scale": 2}, "Extra inputs"),
    ],
)
def test_inconsistent_transforms_are_refused(given, words):
    with pytest.raises(ValidationError, match=words):
        InputTransform.model_validate(given)


def test_the_output_shape_says_why_an_input_cannot_take_it():
    with pytest.raises(ValueError, match="does not fit in 8×10"):
        InputTransform(crop=9).output_shape([3, 8, 10])
    with pytest.raises(ValueError, match="images"):
        InputTransform(crop=2).output_shape([64])
    with pytest.raises(ValueError, match="3-channel"):
        InputTransform(mean=[0.1, 0.2], std=[1.0, 1.0]).output_shape([3, 8, 8])
