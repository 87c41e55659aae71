"""Tensor files read without unpickling: formats sniffed from their bytes, pickles and malformed files refused,
zip archives checked from their central directory and scanned in bounded chunks."""

import numpy as np
import pytest
import torch

from gif.errors import InvalidDatasetError, InvalidWeightsError
from gif.models.checkpoints import read_checkpoint
from gif.models.registry import build_model


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
