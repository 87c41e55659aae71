import pytest
import torch

from gif.data import Dataset, load_mnist, make_dataset, sample_indices, split_indices
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
