"""Image folders, archives and WebDataset shards: converted pixel for pixel, hostile members refused by name."""

import io
import json
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gif.errors import InvalidDatasetError
from gif.io.datasets import read_dataset, summarize_dataset
from gif.io.images import ImageLimits, convert_images, image_archive_kind

RNG = np.random.default_rng(0)


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def colour(height=6, width=5) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def gray(height=6, width=5) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width), dtype=np.uint8)


def write_zip(path, members: dict[str, bytes | None]) -> None:
    """``None`` makes a directory entry."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            if data is None:
                zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                zf.writestr(name, data)


def write_tar(path, members: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def folder_images():
    """Three classes named out of order, two images each, as {member: pixels}."""
    return {f"{cls}/{i}.png": colour() for cls in ("zebra", "ant", "moth") for i in (2, 1)}


def expected_tensors(images: dict[str, np.ndarray], classes: list[str]):
    order = sorted(images, key=lambda name: (classes.index(name.split("/")[0]), name.split("/")[1]))
    x = torch.stack([torch.from_numpy(images[name]).permute(2, 0, 1) for name in order])  # uint8, as stored
    return order, x, torch.tensor([classes.index(name.split("/")[0]) for name in order])


@pytest.mark.parametrize("container", ["zip", "tar", "tar.gz", "folder", "rooted zip"])
def test_an_image_folder_is_read_pixel_for_pixel_in_torchvision_order(tmp_path, folder_images, container):
    encoded = {name: png(pixels) for name, pixels in folder_images.items()}
    path = tmp_path / "data"
    if container == "folder":
        for name, data in encoded.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    elif container == "zip":
        write_zip(path, encoded)
    elif container == "rooted zip":
        write_zip(path, {f"train/{name}": data for name, data in encoded.items()})
    else:
        write_tar(path, encoded, "w:gz" if container == "tar.gz" else "w")
    ids, x, y = expected_tensors(folder_images, ["ant", "moth", "zebra"])
    data = read_dataset(path)
    assert torch.equal(data.x, x) and torch.equal(data.y, y) and list(data.ids) == ids
    facts = convert_images(path, tmp_path / "stored.safetensors")
    assert (facts.source, facts.classes, facts.channels) == ("imagefolder", ["ant", "moth", "zebra"], 3)
    summary = summarize_dataset(tmp_path / "stored.safetensors")
    assert summary.class_names == ["ant", "moth", "zebra"] and summary.has_ids and summary.sample_shape == [3, 6, 5]


def test_given_classes_fix_the_indices_and_refuse_other_folders(tmp_path, folder_images):
    write_zip(tmp_path / "d.zip", {name: png(pixels) for name, pixels in folder_images.items()})
    classes = ["zebra", "moth", "bee", "ant"]
    convert_images(tmp_path / "d.zip", tmp_path / "s.safetensors", classes=classes)
    data = read_dataset(tmp_path / "s.safetensors")
    assert torch.equal(data.y, torch.tensor([0, 0, 1, 1, 3, 3]))
    assert summarize_dataset(tmp_path / "s.safetensors").class_names == classes
    with pytest.raises(InvalidDatasetError) as caught:
        convert_images(tmp_path / "d.zip", tmp_path / "t.safetensors", classes=["zebra", "moth"])
    assert "ant: a class folder not in the given classes" in caught.value.problems[0]


def test_grayscale_keeps_one_channel_and_a_mixed_dataset_becomes_colour(tmp_path):
    grays = {"a/1.png": gray(), "b/1.png": gray()}
    write_zip(tmp_path / "g.zip", {name: png(p) for name, p in grays.items()})
    assert read_dataset(tmp_path / "g.zip").x.shape == (2, 1, 6, 5)
    mixed = {"a/1.png": png(grays["a/1.png"]), "b/1.jpg": png(colour(), "JPEG"), "b/2.webp": png(colour(), "WEBP")}
    write_zip(tmp_path / "m.zip", mixed)
    data = read_dataset(tmp_path / "m.zip")
    assert data.x.shape == (3, 3, 6, 5)
    first = torch.from_numpy(grays["a/1.png"])
    assert all(torch.equal(data.x[0, c], first) for c in range(3))


def test_webdataset_shards_pair_images_with_their_labels_in_archive_order(tmp_path):
    pixels = [colour() for _ in range(3)]
    members = {
        "s/000009.png": png(pixels[0]),
        "s/000009.cls": b"4\n",
        "s/000002.json": json.dumps({"label": 1}).encode(),
        "s/000002.png": png(pixels[1]),
        "s/000005.png": png(pixels[2]),
        "s/000005.json": b"0",
    }
    write_tar(tmp_path / "shard.tar", members)
    data = read_dataset(tmp_path / "shard.tar")
    assert data.ids == ("s/000009", "s/000002", "s/000005")
    assert torch.equal(data.y, torch.tensor([4, 1, 0]))
    assert torch.equal(data.x[1], torch.from_numpy(pixels[1]).permute(2, 0, 1))
    assert convert_images(tmp_path / "shard.tar", tmp_path / "s.safetensors").source == "webdataset"


def patched_png_size(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose header claims ``width``×``height`` (its CRC fixed): what a bomb's header looks like."""
    data = bytearray(png(np.zeros((1, 1), dtype=np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def zero_png(side: int) -> bytes:
    """A real decompression bomb: ``side``² zero pixels, compressed to a few kilobytes."""
    return png(np.zeros((side, side), dtype=np.uint8))


def symlink_zip(path) -> None:
    info = zipfile.ZipInfo("a/link.png")
    info.external_attr = (0o120777 << 16) | 0
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/1.png", png(colour()))
        zf.writestr(info, "/etc/passwd")


def symlink_tar(path) -> None:
    with tarfile.open(path, "w") as tf:
        link = tarfile.TarInfo("a/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)


HOSTILE = {
    "a decompression bomb": (lambda p: write_zip(p, {"a/bomb.png": zero_png(5000)}), "a/bomb.png", "pixels, over"),
    "a 50,000×50,000 header": (
        lambda p: write_zip(p, {"a/1.png": png(colour()), "a/huge.png": patched_png_size(50_000, 50_000)}),
        "a/huge.png",
        "",
    ),
    "a truncated JPEG": (
        lambda p: write_zip(p, {"a/cut.jpg": png(colour(64, 64), "JPEG")[:400]}),
        "a/cut.jpg",
        "unreadable image",
    ),
    "a zip symlink": (symlink_zip, "a/link.png", "links"),
    "a tar symlink": (symlink_tar, "a/link.png", "links"),
    "a ../ member": (lambda p: write_tar(p, {"../evil/1.png": png(colour())}), "../evil/1.png", ".."),
    "an absolute member": (lambda p: write_tar(p, {"/etc/a/1.png": png(colour())}), "/etc/a/1.png", "absolute"),
    "a non-image member": (
        lambda p: write_zip(p, {"a/1.png": png(colour()), "a/notes.txt": b"hello"}),
        "a/notes.txt",
        "not an image",
    ),
    "text named .png": (
        lambda p: write_zip(p, {"a/1.png": png(colour()), "a/2.png": b"not a picture"}),
        "a/2.png",
        "not a JPEG, PNG or WebP",
    ),
    "an empty class folder": (
        lambda p: write_zip(p, {"a/1.png": png(colour()), "empty/": None}),
        "empty",
        "empty class folder",
    ),
    "two sizes": (
        lambda p: write_zip(p, {"a/1.png": png(colour(6, 5)), "b/1.png": png(colour(7, 5))}),
        "b/1.png",
        "one size",
    ),
    "a label without its image": (
        lambda p: write_tar(p, {"1.png": png(colour()), "1.cls": b"0", "2.cls": b"1"}),
        "2.cls",
        "no image",
    ),
    "a label that is not a number": (
        lambda p: write_tar(p, {"1.png": png(colour()), "1.cls": b"cat"}),
        "1.cls",
        "integer",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archives_are_refused_naming_the_member_and_nothing_is_written(tmp_path, case):
    make, member, detail = HOSTILE[case]
    make(tmp_path / "upload")
    out = tmp_path / "out" / "stored.safetensors"
    out.parent.mkdir()
    with pytest.raises(InvalidDatasetError) as caught:
        convert_images(tmp_path / "upload", out, limits=ImageLimits(max_pixels=4096 * 4096))
    problem = caught.value.problems[0] if caught.value.problems else str(caught.value)
    assert problem.startswith(f"{member}: ") and detail in problem, problem
    assert list(out.parent.iterdir()) == []


def test_damaged_archives_are_refused_not_crashed_on(tmp_path):
    write_zip(tmp_path / "d.zip", {"a/1.png": png(colour())})
    data = bytearray((tmp_path / "d.zip").read_bytes())
    start = data.index(b"IDAT") + 8  # a byte of the stored PNG's pixels: the member's CRC no longer matches
    data[start] ^= 0xFF
    (tmp_path / "d.zip").write_bytes(bytes(data))
    with pytest.raises(InvalidDatasetError) as caught:
        read_dataset(tmp_path / "d.zip")
    assert caught.value.problems[0].startswith("a/1.png: corrupt member")
    write_tar(tmp_path / "d.tgz", {f"a/{i}.png": png(colour(64, 64)) for i in range(3)}, "w:gz")
    (tmp_path / "cut.tgz").write_bytes((tmp_path / "d.tgz").read_bytes()[:-100])
    with pytest.raises(InvalidDatasetError, match="corrupt tar archive"):
        read_dataset(tmp_path / "cut.tgz")


def test_only_archives_of_images_are_taken_for_images(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), y=np.zeros(2, dtype=np.int64))
    (tmp_path / "t.bin").write_bytes(b"\x00" * 600)
    assert image_archive_kind(tmp_path / "d.npz") is None and image_archive_kind(tmp_path / "t.bin") is None
    write_zip(tmp_path / "i.zip", {"a/1.png": png(colour())})
    assert image_archive_kind(tmp_path / "i.zip") == "zip" and image_archive_kind(tmp_path) == "folder"


def test_the_decoded_size_is_bounded_before_it_is_written(tmp_path):
    write_zip(tmp_path / "d.zip", {f"a/{i}.png": png(colour()) for i in range(4)})
    from gif.errors import TooLargeError

    with pytest.raises(TooLargeError):
        convert_images(tmp_path / "d.zip", tmp_path / "s.safetensors", limits=ImageLimits(max_bytes=3 * 90 + 1))
    assert not (tmp_path / "s.safetensors").exists()
