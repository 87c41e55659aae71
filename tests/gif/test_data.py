import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gif.data import Dataset, load_mnist, make_dataset, sample_indices, split_indices
from gif.errors import InvalidDatasetError
from gif.io.datasets import read_dataset


def test_mnist_matches_the_published_files(data_dir):
    mnist = load_mnist(data_dir)
    assert mnist.x.shape == (10_000, 1, 28, 28) and mnist.x.dtype == torch.float32
    assert mnist.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(mnist.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(mnist.x.min()) >= 0.0 and float(mnist.x.max()) == 1.0


def test_digits(digits):
    assert digits.x.shape == (1797, 1, 8, 8) and digits.num_classes == 10


def test_files_roundtrip_safetensors_and_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(5, 1, 4, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0], dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    from_npz = read_dataset(tmp_path / "d.npz")
    assert from_npz.x.dtype == torch.float32 and torch.allclose(from_npz.x * 255, torch.from_numpy(x).float())
    assert from_npz.y.dtype == torch.int64
    from_npz.save(tmp_path / "d.safetensors")
    again = read_dataset(tmp_path / "d.safetensors")
    assert torch.equal(again.x, from_npz.x) and torch.equal(again.y, from_npz.y)


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


def test_dataset_file_must_hold_exactly_x_and_y(tmp_path):
    save_file({"x": torch.zeros(2, 2), "labels": torch.zeros(2, dtype=torch.long)}, tmp_path / "d.safetensors")
    with pytest.raises(InvalidDatasetError, match="exactly"):
        read_dataset(tmp_path / "d.safetensors")
    (tmp_path / "p.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InvalidDatasetError, match="pickle"):
        read_dataset(tmp_path / "p.pkl")
    torch.save({"x": torch.zeros(2, 2), "y": torch.zeros(2, dtype=torch.long)}, tmp_path / "t.pt")
    with pytest.raises(InvalidDatasetError, match="not accepted"):
        read_dataset(tmp_path / "t.pt")


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


def test_summaries_match_the_loaded_dataset_and_refuse_the_same(tmp_path, digits):
    from gif.io.datasets import summarize_dataset

    digits.save(tmp_path / "d.safetensors")
    np.savez(tmp_path / "d.npz", x=digits.x.numpy(), y=digits.y.numpy())
    for name in ("d.safetensors", "d.npz"):
        summary = summarize_dataset(tmp_path / name)
        assert summary.num_samples == 1797 and summary.num_classes == 10 and summary.sample_shape == [1, 8, 8]
        assert summary.class_counts == torch.bincount(digits.y).tolist()
    x = digits.x.clone()
    x[5, 0, 0, 0] = float("inf")
    save_file({"x": x, "y": digits.y}, tmp_path / "bad.safetensors")
    with pytest.raises(InvalidDatasetError, match="NaN or Inf"):
        summarize_dataset(tmp_path / "bad.safetensors")
    save_file({"x": digits.x, "y": digits.y - 1}, tmp_path / "neg.safetensors")
    with pytest.raises(InvalidDatasetError, match="negative"):
        summarize_dataset(tmp_path / "neg.safetensors")
    save_file({"x": digits.x[:3], "y": digits.y}, tmp_path / "len.safetensors")
    with pytest.raises(InvalidDatasetError, match="samples but y has"):
        summarize_dataset(tmp_path / "len.safetensors")


def compressed_zeros_npz(path, samples: int, sample_shape=(3, 64, 64)) -> None:
    """An ``np.savez_compressed``-style archive of float32 zeros written in chunks (a decompression bomb that
    costs its writer no memory)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            header = {"descr": "<f4", "fortran_order": False, "shape": (samples, *sample_shape)}
            np.lib.format.write_array_header_1_0(fh, header)
            row = np.zeros(sample_shape, dtype=np.float32).tobytes()
            for _ in range(samples):
                fh.write(row)
        with zf.open("y.npy", "w") as fh:
            np.lib.format.write_array(fh, np.arange(samples) % 10)


def test_an_npz_bomb_is_refused_from_its_directory_with_flat_memory(tmp_path):
    """The issue's bomb, scaled: ~590 MB of zeros in ~0.6 MB; refused before any of it is inflated."""
    import json
    import os
    import subprocess
    import sys

    bomb = tmp_path / "bomb.npz"
    compressed_zeros_npz(bomb, 12_000)
    assert os.path.getsize(bomb) < 2_000_000
    probe = (
        "import json, resource, sys\n"
        "from gif.io.datasets import summarize_dataset\n"
        "from gif.errors import TooLargeError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    summarize_dataset(sys.argv[1], 8 << 30)\n"
        "    outcome = 'accepted'\n"
        "except TooLargeError as exc:\n"
        "    outcome = str(exc)\n"
        "rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'outcome': outcome, 'rise_kib': rise}))\n"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", probe, str(bomb)], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1])  # fmt: skip
    assert "expands" in result["outcome"] and "store it uncompressed" in result["outcome"]
    assert result["rise_kib"] < 64 * 1024


def test_npz_archives_are_checked_in_bounded_chunks(tmp_path):
    from gif.errors import TooLargeError
    from gif.io.datasets import summarize_dataset

    x = np.random.default_rng(0).random((50, 1, 8, 8), dtype=np.float32)
    np.savez_compressed(tmp_path / "ok.npz", x=x, y=np.arange(50) % 5)
    assert summarize_dataset(tmp_path / "ok.npz").class_counts == [10] * 5
    with pytest.raises(TooLargeError, match="GIF_MAX_DATASET_BYTES = 1000"):
        summarize_dataset(tmp_path / "ok.npz", max_bytes=1000)
    x[3, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(50) % 5)
    with pytest.raises(InvalidDatasetError, match="NaN or Inf"):
        summarize_dataset(tmp_path / "nan.npz")
    lying = tmp_path / "lying.npz"  # a header that claims more samples than the member holds
    compressed_zeros_npz(lying, 4, (2,))
    import zipfile

    with zipfile.ZipFile(lying) as zf:
        y = zf.read("y.npy")
        x_member = bytearray(zf.read("x.npy")).replace(b"(4, 2)", b"(9, 2)")
    with zipfile.ZipFile(lying, "w") as zf:
        zf.writestr("x.npy", bytes(x_member))
        zf.writestr("y.npy", y)
    with pytest.raises(InvalidDatasetError, match="does not match"):
        summarize_dataset(lying)
    np.savez(tmp_path / "objects.npz", x=np.array([object()] * 2), y=np.arange(2))
    with pytest.raises(InvalidDatasetError, match="unsupported dtype"):
        summarize_dataset(tmp_path / "objects.npz")
