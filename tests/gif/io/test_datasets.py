"""Dataset files: read whole (read_dataset) or summarised in bounded memory (summarize_dataset)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gif.errors import InvalidDatasetError
from gif.io.datasets import read_dataset, summarize_dataset


def _saved(tmp_path, tensors):
    save_file(tensors, tmp_path / "plain.safetensors")
    return tmp_path / "plain.safetensors"


def test_files_roundtrip_safetensors_and_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(5, 1, 4, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0], dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    from_npz = read_dataset(tmp_path / "d.npz")
    assert from_npz.x.dtype == torch.uint8 and torch.equal(from_npz.x, torch.from_numpy(x))  # kept as stored
    assert from_npz.y.dtype == torch.int64
    from_npz.save(tmp_path / "d.safetensors")
    again = read_dataset(tmp_path / "d.safetensors")
    assert torch.equal(again.x, from_npz.x) and torch.equal(again.y, from_npz.y)


def test_dataset_file_must_hold_x_and_y_and_maybe_ids(tmp_path):
    save_file({"x": torch.zeros(2, 2), "labels": torch.zeros(2, dtype=torch.long)}, tmp_path / "d.safetensors")
    with pytest.raises(InvalidDatasetError, match="the tensors .x. and .y."):
        read_dataset(tmp_path / "d.safetensors")
    (tmp_path / "p.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InvalidDatasetError, match="pickle"):
        read_dataset(tmp_path / "p.pkl")
    torch.save({"x": torch.zeros(2, 2), "y": torch.zeros(2, dtype=torch.long)}, tmp_path / "t.pt")
    with pytest.raises(InvalidDatasetError, match="not accepted"):
        read_dataset(tmp_path / "t.pt")


def test_summaries_match_the_loaded_dataset_and_refuse_the_same(tmp_path, digits):

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


def test_ids_come_from_a_tensor_or_the_metadata_and_name_examples_as_text(tmp_path):
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 0, 1])
    save_file({"x": x, "y": y, "ids": torch.tensor([70, 71, 72, 73])}, tmp_path / "ints.safetensors")
    save_file({"x": x, "y": y}, tmp_path / "texts.safetensors", metadata={"ids": '["a", "b", "c", 7]'})
    np.savez(tmp_path / "ints.npz", x=x.numpy(), y=y.numpy(), ids=np.array([5, 6, 7, 8]))
    assert read_dataset(tmp_path / "ints.safetensors").indices_of([73, "70"]) == [3, 0]
    texts = read_dataset(tmp_path / "texts.safetensors")
    assert texts.ids == ("a", "b", "c", "7") and texts.indices_of([7]) == [3]
    assert texts.subset([3, 1]).ids == ("7", "b")
    assert read_dataset(tmp_path / "ints.npz").indices_of([8]) == [3]
    for name in ("ints.safetensors", "texts.safetensors", "ints.npz"):
        assert summarize_dataset(tmp_path / name).has_ids
    with pytest.raises(InvalidDatasetError, match="unknown ids") as caught:
        texts.indices_of(["a", "zz"])
    assert "zz" in str(caught.value.problems)
    with pytest.raises(InvalidDatasetError, match="carries no ids"):
        read_dataset(_saved(tmp_path, {"x": x, "y": y})).indices_of([1])


@pytest.mark.parametrize(
    ("tensors", "metadata", "problem"),
    [
        ({"ids": torch.tensor([1, 1, 2, 3])}, None, "must not repeat"),
        ({"ids": torch.tensor([1, 2, 3])}, None, "3 ids for 4 examples"),
        ({"ids": torch.rand(4)}, None, "one-dimensional integers"),
        ({}, {"ids": '["a", "b", "c", "a"]'}, "must not repeat"),
        ({}, {"ids": '{"a": 1}'}, "JSON list"),
        ({"ids": torch.arange(4)}, {"ids": "[1, 2, 3, 4]"}, "once"),
    ],
)
def test_bad_ids_are_refused_by_the_reader_and_the_summary_alike(tmp_path, tensors, metadata, problem):
    path = tmp_path / "d.safetensors"
    save_file({"x": torch.rand(4, 3), "y": torch.tensor([0, 1, 0, 1]), **tensors}, path, metadata=metadata)
    for read in (read_dataset, summarize_dataset):
        with pytest.raises(InvalidDatasetError) as caught:
            read(path)
        assert problem in str(caught.value) + str(caught.value.problems)
