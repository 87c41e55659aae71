"""A model's declared input transform: torchvision's presets replayed batch by batch, its output shape known ahead."""

import pytest
import torch
from pydantic import ValidationError
from torchvision.transforms import v2

from gif.data import Dataset
from gif.models.transforms import InputTransform

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


def test_a_dataset_is_transformed_batch_by_batch_with_its_labels_and_ids():
    data = Dataset(torch.rand(7, 1, 10, 12), torch.arange(7), tuple("abcdefg"))
    transform = InputTransform(resize=8, crop=8, channels=3, mean=[0.5], std=[0.25])
    out = transform.apply(data, torch.device("cpu"), batch_size=3)
    assert out.x.shape == (7, 3, 8, 8) and torch.equal(out.y, data.y) and out.ids == data.ids
    torch.testing.assert_close(out.x, transform(data.x))
    assert transform.describe() == "3 channel(s) → resize 8 → centre crop 8 → normalise mean [0.5] std [0.25]"


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
