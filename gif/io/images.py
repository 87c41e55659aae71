"""Image datasets as users hold them, converted once to the stored form the workers read.

Accepted: an ImageFolder tree (``<class>/<image>``) as a folder, a ``.zip`` or a ``.tar``/``.tar.gz`` (one common
top folder is allowed), or WebDataset shards (a ``.tar`` whose samples share a basename: the image beside its label
in ``.cls`` or ``.json``). Images are JPEG, PNG or WebP; they keep their channels (grayscale stays one channel; a
dataset mixing grayscale and colour becomes colour) and must share one size. The stored form is a safetensors file:
``x`` uint8 N×C×H×W, ``y`` int64, and in its metadata the class names and each image's id (its path in the
archive, or its WebDataset key), so requests may name examples by id.

These are untrusted bytes: members are read, never extracted. Names that are absolute or climb out with ``..``,
links and special files are refused (tar members also pass the standard library's ``data`` filter); Pillow opens
only the three formats, and an image's dimensions are checked from its header before any pixel is decoded, so a
decompression bomb never allocates. Images are decoded one at a time into a scratch file beside the output, so
memory does not grow with the archive. Every refusal names the member.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import tempfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gif.errors import InvalidDatasetError, TooLargeError
from gif.io.files import write_safetensors_parts

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
LABEL_SUFFIXES = frozenset({".cls", ".json"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La"})
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_LABEL_BYTES = 4096
WRITE_BATCH_BYTES = 8 * 1024 * 1024
Source = Literal["imagefolder", "webdataset"]
# What reading a damaged archive raises (gzip's BadGzipFile is an OSError; zlib's own error is not)
CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what one upload may make the service decode."""

    max_pixels: int = 4096 * 4096  # per image, checked from its header before decoding
    max_bytes: int = 1 << 40  # the decoded dataset (N×C×H×W bytes)


@dataclass(frozen=True)
class ImageDatasetFacts:
    """What the conversion found, for the dataset's record."""

    source: Source
    num_images: int
    channels: int
    height: int
    width: int
    classes: list[str] | None


def refused(member: str, detail: str) -> InvalidDatasetError:
    return InvalidDatasetError("the image archive was refused", [f"{member}: {detail}"])


@dataclass(frozen=True)
class Entry:
    """One member of an archive or folder: a file (with its byte size) or a directory."""

    name: str
    size: int
    is_dir: bool


def _checked_name(raw: str) -> str:
    """The member's path, refused when it could point outside the archive (absolute, ``..``, a drive, backslashes).
    String operations, not pathlib: this runs for every member, and pathlib's parsing was a tenth of the ingest."""
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if not parts or raw.startswith("/") or "\\" in raw or ":" in parts[0]:
        raise refused(raw or "(empty name)", "absolute or malformed member names are refused")
    if ".." in parts:
        raise refused(raw, "a member name must not climb out of the archive with '..'")
    return "/".join(parts)


class _Members(ABC):
    """An archive's members: ``entries`` (listed and checked first, nothing decoded) and then ``contents`` (each
    file's bytes, in the archive's own order, so a compressed tar is read front to back once more)."""

    def __enter__(self) -> _Members:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 -- a hook: only the zip reader holds a file open
        """Release what the reader holds open."""

    @abstractmethod
    def entries(self) -> list[Entry]: ...

    @abstractmethod
    def contents(self) -> Iterator[tuple[str, bytes]]: ...


class _ZipMembers(_Members):
    """One open archive for the listing and the reading: its central directory is parsed once (50,000 names take
    about a second)."""

    def __init__(self, path: Path):
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise InvalidDatasetError(f"corrupt zip archive: {exc}") from None

    def close(self) -> None:
        self.zip.close()

    def entries(self) -> list[Entry]:
        entries = []
        for info in self.zip.infolist():
            name = _checked_name(info.filename.rstrip("/") if info.is_dir() else info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise refused(name, "links are refused")
            entries.append(Entry(name, info.file_size, info.is_dir()))
        return entries

    def contents(self) -> Iterator[tuple[str, bytes]]:
        for info in self.zip.infolist():
            if not info.is_dir():
                yield _checked_name(info.filename), _read_member(info.filename, self.zip.open(info), info.file_size)


class _TarMembers(_Members):
    def __init__(self, path: Path):
        self.path = path

    def _checked(self, member: tarfile.TarInfo) -> Entry:
        name = _checked_name(member.name.rstrip("/"))
        if not (member.isfile() or member.isdir()):
            raise refused(name, "links, devices and other special members are refused")
        try:
            tarfile.data_filter(member, "/nonexistent-destination")
        except tarfile.FilterError as exc:
            raise refused(name, str(exc)) from None
        return Entry(name, member.size, member.isdir())

    def _open(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path, "r:*")
        except CORRUPT as exc:
            raise InvalidDatasetError(f"corrupt tar archive: {exc}") from None

    def entries(self) -> list[Entry]:
        """Every member, checked; for a .tar.gz this reads the whole stream, so its CRC is checked here."""
        with self._open() as tf:
            try:
                return [self._checked(member) for member in tf]
            except CORRUPT as exc:
                raise InvalidDatasetError(f"corrupt tar archive: {exc}") from None

    def contents(self) -> Iterator[tuple[str, bytes]]:
        with self._open() as tf:
            for member in tf:
                if member.isfile():
                    handle = tf.extractfile(member)
                    assert handle is not None  # a regular file always has a handle
                    yield self._checked(member).name, _read_member(member.name, handle, member.size)


class _FolderMembers(_Members):
    """A folder on the local disk (the command line): symbolic links are refused, not followed."""

    def __init__(self, path: Path):
        self.path = path

    def _walk(self) -> Iterator[tuple[Path, Entry]]:
        for root, dirs, files in os.walk(self.path, followlinks=False):
            for name in sorted(dirs) + sorted(files):
                full = Path(root) / name
                relative = full.relative_to(self.path).as_posix()
                info = full.lstat()
                if stat.S_ISLNK(info.st_mode) or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                    raise refused(relative, "links, devices and other special files are refused")
                yield full, Entry(relative, info.st_size, stat.S_ISDIR(info.st_mode))

    def entries(self) -> list[Entry]:
        return [entry for _, entry in self._walk()]

    def contents(self) -> Iterator[tuple[str, bytes]]:
        for full, entry in self._walk():
            if not entry.is_dir:
                with open(full, "rb") as fh:
                    yield entry.name, _read_member(entry.name, fh, entry.size)


def _read_member(name: str, handle: IO[bytes], declared: int) -> bytes:
    if declared > MAX_MEMBER_BYTES:
        raise refused(name, f"{declared} bytes, over the {MAX_MEMBER_BYTES} allowed per member")
    try:
        with handle:
            return handle.read(MAX_MEMBER_BYTES + 1)
    except CORRUPT as exc:  # a zip member's CRC, a truncated or damaged compressed stream
        raise refused(name, f"corrupt member: {exc}") from None


def image_archive_kind(path: str | Path) -> Literal["zip", "tar", "folder"] | None:
    """How to read ``path`` as images: a folder, a tar (plain or gzip), a zip holding images; None otherwise."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":
        return "tar"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return None
        if not any(n.endswith(".npy") for n in names) and any(_suffix(n) in IMAGE_SUFFIXES for n in names):
            return "zip"
    return None


def _suffix(name: str) -> str:
    """The file name's last extension, lower case ("" for none or a hidden file), as ``PurePosixPath.suffix``."""
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    return base[dot:].lower() if 0 < dot < len(base) - 1 else ""


@dataclass
class _Plan:
    """Which file holds each sample's image and label, in the dataset's order."""

    source: Source
    images: list[str]  # member name per sample
    ids: list[str]
    labels: list[int | None]  # None: read from the WebDataset label member
    label_members: dict[str, int] = field(default_factory=dict)  # label member → sample index
    classes: list[str] | None = None


def _folder_plan(files: list[Entry], dirs: list[Entry], classes: list[str] | None) -> _Plan:
    parts = [f.name.split("/") for f in files]
    root = parts[0][0] if parts and all(len(p) == 3 and p[0] == parts[0][0] for p in parts) else None
    depth = 3 if root is not None else 2
    for entry, p in zip(files, parts, strict=True):
        if len(p) != depth:
            raise refused(entry.name, "an image folder holds <class>/<image> (one optional top folder)")
        if _suffix(entry.name) not in IMAGE_SUFFIXES:
            raise refused(entry.name, f"not an image (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")
    found = sorted({p[-2] for p in parts})
    for entry in dirs:
        p = entry.name.split("/")
        if len(p) == depth - 1 and (root is None or p[0] == root) and p[-1] not in found:
            raise refused(entry.name, "an empty class folder")
    names = classes if classes is not None else found
    unknown = [c for c in found if c not in names]
    if unknown:
        raise refused(unknown[0], f"a class folder not in the given classes {names}")
    index = {name: i for i, name in enumerate(names)}
    order = sorted(range(len(files)), key=lambda i: (index[parts[i][-2]], parts[i][-1]))
    ids = ["/".join(parts[i][-2:]) for i in order]
    return _Plan("imagefolder", [files[i].name for i in order], ids, [index[parts[i][-2]] for i in order], {}, names)


def _webdataset_plan(files: list[Entry], classes: list[str] | None) -> _Plan:
    images: dict[str, str] = {}
    labels: dict[str, str] = {}
    for entry in files:
        directory, base = entry.name.rpartition("/")[::2]
        stem, dot, extension = base.partition(".")
        key = f"{directory}/{stem}" if directory else stem
        suffix = f".{extension.lower()}" if dot else ""
        if suffix in IMAGE_SUFFIXES:
            into = images
        elif suffix in LABEL_SUFFIXES:
            into = labels
            if entry.size > MAX_LABEL_BYTES:
                raise refused(entry.name, f"a label member over {MAX_LABEL_BYTES} bytes")
        else:
            raise refused(entry.name, "not an image or a label (.cls, .json) of a WebDataset sample")
        if key in into:
            raise refused(entry.name, f"sample {key!r} has two {'images' if into is images else 'labels'}")
        into[key] = entry.name
    for key, member in images.items():
        if key not in labels:
            raise refused(member, "this WebDataset sample has no label (.cls or .json)")
    for key, member in labels.items():
        if key not in images:
            raise refused(member, "this WebDataset sample has no image")
    keys = list(images)
    return _Plan(
        "webdataset",
        [images[k] for k in keys],
        keys,
        [None] * len(keys),
        {labels[k]: i for i, k in enumerate(keys)},
        classes,
    )


def _parse_label(member: str, raw: bytes) -> int:
    try:
        text = raw.decode("utf-8").strip()
        value = json.loads(text) if member.lower().endswith(".json") else int(text)
    except (UnicodeDecodeError, ValueError):
        raise refused(member, "the label must be an integer (.cls) or JSON holding one (.json)") from None
    if isinstance(value, dict):
        value = value.get("label", value.get("cls"))
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise refused(member, 'the label must be a non-negative integer (a .json label: n or {"label": n})')
    return value


def _decode(member: str, data: bytes, max_pixels: int) -> tuple[int, int, int, bytes]:
    """(channels, height, width, the pixels as C×H×W bytes), the dimensions checked before anything is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise refused(member, f"{width}×{height} pixels, over the {max_pixels} allowed per image")
            if image.mode in GRAYSCALE_MODES:
                target, channels = "L", 1
            elif image.mode in COLOUR_MODES:
                target, channels = "RGB", 3
            else:
                raise refused(member, f"{image.mode} images are not accepted: save 8-bit grayscale or colour")
            image.load()
            pixels = image if image.mode == target else image.convert(target)
            array = np.asarray(pixels, dtype=np.uint8).reshape(height, width, channels)
    except Image.DecompressionBombError as exc:
        raise refused(member, str(exc)) from None
    except UnidentifiedImageError:
        raise refused(member, "not a JPEG, PNG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise refused(member, f"unreadable image: {exc}") from None
    return channels, height, width, np.ascontiguousarray(array.transpose(2, 0, 1)).tobytes()


def _members(path: Path) -> _Members:
    kind = image_archive_kind(path)
    readers: dict[str, Callable[[Path], _Members]] = {"zip": _ZipMembers, "tar": _TarMembers, "folder": _FolderMembers}
    if kind is None:
        raise InvalidDatasetError("not an image archive: expected a folder, a .zip or a .tar (.tar.gz) of images")
    return readers[kind](path)


def convert_images(
    path: str | Path, out: str | Path, classes: list[str] | None = None, limits: ImageLimits | None = None
) -> ImageDatasetFacts:
    """Convert an image folder, archive or WebDataset shard at ``path`` into the stored dataset file ``out``."""
    limits = limits or ImageLimits()
    if classes is not None and (len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes)):
        raise InvalidDatasetError("classes must be a list of distinct names")
    out = Path(out)
    with _members(Path(path)) as members, tempfile.TemporaryFile(dir=out.parent) as scratch:
        entries = members.entries()
        files = [e for e in entries if not e.is_dir]
        if not files:
            raise InvalidDatasetError("the archive holds no images")
        webdataset = any(_suffix(e.name) in LABEL_SUFFIXES for e in files)
        plan = (
            _webdataset_plan(files, classes)
            if webdataset
            else _folder_plan(files, [e for e in entries if e.is_dir], classes)
        )
        position = {name: i for i, name in enumerate(plan.images)}
        layout = _decode_into(members, plan, position, scratch, limits)
        channels = max(c for c, _ in layout.placed)
        labels = [label for label in plan.labels if label is not None]
        if plan.classes is not None and labels and max(labels) >= len(plan.classes):
            raise InvalidDatasetError(f"label {max(labels)} is outside the {len(plan.classes)} given classes")
        shape = (len(plan.images), channels, layout.height, layout.width)
        if int(np.prod(shape)) > limits.max_bytes:
            raise TooLargeError(f"the decoded images take {int(np.prod(shape))} bytes, over {limits.max_bytes}")
        metadata = {"source": plan.source, "ids": json.dumps(plan.ids)}
        if plan.classes is not None:
            metadata["classes"] = json.dumps(plan.classes)
        write_safetensors_parts(
            out,
            [
                ("x", torch.uint8, shape, _pixels_in_order(scratch, layout, channels)),
                ("y", torch.int64, (len(labels),), iter([np.asarray(labels, dtype="<i8").tobytes()])),
            ],
            metadata,
        )
    return ImageDatasetFacts(plan.source, len(plan.images), channels, layout.height, layout.width, plan.classes)


@dataclass
class _Layout:
    """Where each sample's pixels lie in the scratch file: (channels, byte offset) in the dataset's order."""

    placed: list[tuple[int, int]]
    height: int
    width: int


def _decode_into(
    members: _Members, plan: _Plan, position: dict[str, int], scratch: BinaryIO, limits: ImageLimits
) -> _Layout:
    placed: list[tuple[int, int] | None] = [None] * len(plan.images)
    first: tuple[str, int, int] | None = None
    offset = 0
    for name, data in members.contents():
        if name in plan.label_members:
            plan.labels[plan.label_members[name]] = _parse_label(name, data)
            continue
        channels, height, width, pixels = _decode(name, data, limits.max_pixels)
        if first is None:
            first = (name, height, width)
        elif (height, width) != first[1:]:
            raise refused(
                name,
                f"{width}×{height} pixels, but {first[0]} is {first[2]}×{first[1]}: every image of a dataset must "
                "have one size (resize them before uploading)",
            )
        if offset + len(pixels) > limits.max_bytes:
            raise TooLargeError(f"the decoded images take more than {limits.max_bytes} bytes")
        scratch.write(pixels)
        placed[position[name]] = (channels, offset)
        offset += len(pixels)
    assert first is not None and all(p is not None for p in placed)  # every planned member was read
    return _Layout([p for p in placed if p is not None], first[1], first[2])


def write_png(target: str | Path | IO[bytes], pixels: torch.Tensor) -> None:
    """A grayscale (H × W or 1 × H × W) or colour (3 × H × W) uint8 image as a PNG: the demo's and the benchmarks'."""
    if pixels.dim() == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    array = pixels.numpy() if pixels.dim() == 2 else pixels.permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(array).save(target, "PNG")


def _pixels_in_order(scratch: BinaryIO, layout: _Layout, channels: int) -> Iterator[bytes]:
    """The samples' pixels in the dataset's order, grayscale ones repeated to ``channels`` planes, in large writes."""
    plane = layout.height * layout.width
    batch = bytearray()
    for own_channels, offset in layout.placed:
        scratch.seek(offset)
        pixels = scratch.read(own_channels * plane)
        batch += pixels * (channels // own_channels)
        if len(batch) >= WRITE_BATCH_BYTES:
            yield bytes(batch)
            batch.clear()
    yield bytes(batch)
