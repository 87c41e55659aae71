"""Dataset files: read whole (read_dataset) or summarised in bounded memory (summarize_dataset)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gif.errors import InvalidDatasetError
from gif.io.datasets import read_dataset


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
