import pytest
import torch

from gif.data import Dataset, load_mnist, make_dataset, sample_indices, split_indices, stored_dataset
from gif.errors import InvalidDatasetError


def test_mnist_matches_the_published_files(data_dir):
    mnist = load_mnist(data_dir)
    assert mnist.x.shape == (10_000, 1, 28, 28) and mnist.x.dtype == torch.float32
    assert mnist.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(mnist.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(mnist.x.min()) >= 0.0 and float(mnist.x.max()) == 1.0


def test_digits(digits):
    assert digits.x.shape == (1797, 1, 8, 8) and digits.num_classes == 10


@pytest.mark.parametrize(
    "x, y, fragment",
    [
        (torch.zeros(3, 2), torch.tensor([0, 1, -1]), "negative"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), "NaN"),
        (torch.zeros(3, 2), torch.tensor([0, 1]), "3 samples but y has 2"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0]), "integer labels"),
        (torch.zeros(3), torch.tensor([0, 1, 1]), "feature axis"),
        (torch.zeros(2, 2, dtype=torch.int32), torch.tensor([0, 1]), "float32 or uint8"),
    ],
)
def test_invalid_datasets(x, y, fragment):
    with pytest.raises(InvalidDatasetError, match=fragment):
        make_dataset(x, y)


def test_seeded_splits_are_deterministic_and_disjoint():
    a, b = split_indices(100, 0.2, seed=3)
    a2, b2 = split_indices(100, 0.2, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert len(a) == 20 and len(set(a.tolist()) | set(b.tolist())) == 100
    assert not torch.equal(split_indices(100, 0.2, seed=4)[0], a)
    pool = torch.arange(10, 60)
    s = sample_indices(pool, 7, seed=1)
    assert len(s) == 7 and torch.equal(s, sample_indices(pool, 7, seed=1)) and set(s.tolist()) <= set(pool.tolist())
    assert torch.equal(sample_indices(pool, "all", 0), pool) and torch.equal(sample_indices(pool, 500, 0), pool)


def test_relabelled_and_subset():
    d = Dataset(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]))
    assert d.relabelled([1, 3], [9, 8]).y.tolist() == [0, 9, 2, 8] and d.y.tolist() == [0, 1, 2, 3]
    assert d.subset([2, 0]).y.tolist() == [2, 0]


def pixels(n: int = 10) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class Doubling:
    """A stand-in for a model's input transform that records where and on what it ran."""

    def __init__(self):
        self.seen: list[tuple[torch.device, torch.dtype]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.device, x.dtype))
        return 2 * x

    def output_shape(self, sample_shape: list[int]) -> list[int]:
        return sample_shape


def test_uint8_images_are_kept_as_stored_and_fed_as_make_dataset_converts_them():
    images, labels = pixels(), torch.arange(10) % 3
    stored, whole = stored_dataset(images, labels), make_dataset(images, labels)
    assert stored.x.dtype == torch.uint8 and torch.equal(stored.x, images)
    assert whole.x.dtype == torch.float32
    fed = [x for x, _ in stored.batches(4)]
    assert [len(x) for x in fed] == [4, 4, 2] and all(x.dtype == torch.float32 for x in fed)
    assert torch.equal(torch.cat(fed), whole.x)  # bit for bit: uint8 / 255 in float32, a batch at a time
    assert torch.equal(stored.inputs_at(torch.tensor([7, 1])), whole.x[[7, 1]])
    floats = stored_dataset(whole.x, labels)
    assert all(x.data_ptr() == floats.x[i * 4 :].data_ptr() for i, (x, _) in enumerate(floats.batches(4)))  # views


def test_subsets_splits_and_relabels_keep_the_stored_pixels_and_how_they_are_fed():
    doubling = Doubling()
    data = stored_dataset(pixels(), torch.arange(10) % 3).fed(doubling, torch.device("cpu"))
    derived = [
        data.subset([3, 1]),
        *data.split(data.y == 0),
        data.relabelled([0], [2]),
        data.with_labels(torch.zeros(10, dtype=torch.long)),
    ]
    for d in derived:
        assert d.x.dtype == torch.uint8 and d.preprocessing is doubling and d.device == torch.device("cpu")
    assert torch.equal(derived[0].inputs_at(slice(None)), 2 * data.x[[3, 1]].float() / 255)


def test_inputs_are_made_on_the_given_device_from_the_stored_pixels():
    """The meta device stands in for a GPU: the uint8 pixels move there, and are converted and transformed there."""
    doubling = Doubling()
    data = stored_dataset(pixels(), torch.arange(10) % 3).fed(doubling, torch.device("meta"))
    batches = list(data.batches(4))
    assert all(x.device.type == "meta" and x.shape[1:] == (3, 4, 5) for x, _ in batches)
    assert all(y.device.type == "cpu" for _, y in batches)
    assert doubling.seen == [(torch.device("meta"), torch.float32)] * 3
    assert data.x.device.type == "cpu" and data.sample_shape == data.input_shape == [3, 4, 5]
