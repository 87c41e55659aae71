"""Reading and writing tensor files without ever unpickling user data.

Accepted formats are recognised by their first bytes, not by their names:
safetensors (an 8-byte header length, then a JSON header), torch zip state dicts (read with
``weights_only=True``) and numpy ``.npz`` archives (read with ``allow_pickle=False``).
Writes go to a temporary file in the same directory and are renamed into place, so a reader
never sees a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

SAFETENSORS_DTYPES = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (None, torch.bfloat16),
    "I64": (np.int64, torch.int64),
    "I32": (np.int32, torch.int32),
    "I16": (np.int16, torch.int16),
    "I8": (np.int8, torch.int8),
    "U8": (np.uint8, torch.uint8),
    "BOOL": (np.bool_, torch.bool),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
SCAN_CHUNK_BYTES = 8 * 1024 * 1024


class TensorFileError(ValueError):
    """The file is not a readable tensor file of an accepted format; the message says why."""


class DeclaredSizeError(TensorFileError):
    """An archive declares more bytes than allowed, or expands too much: refused before it is read."""


MAX_EXPANSION_RATIO = 100  # deflate reaches ~1000× on zeros; image arrays compress far less
EXPANSION_CHECKED_ABOVE = 64 * 1024 * 1024  # small members may compress as they like


def check_archive_sizes(path: str | Path, max_bytes: int, limit_name: str) -> None:
    """Refuse a zip whose members declare more than ``max_bytes`` uncompressed in all, or one that expands more
    than ``MAX_EXPANSION_RATIO`` times (a decompression bomb), from the central directory alone."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise TensorFileError(f"corrupt zip archive: {exc}") from None
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise DeclaredSizeError(f"the archive expands to {declared} bytes, over {limit_name} = {max_bytes}")
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > EXPANSION_CHECKED_ABOVE and ratio > MAX_EXPANSION_RATIO:
            raise DeclaredSizeError(
                f"{info.filename} expands {ratio:.0f}× ({info.compress_size} → {info.file_size} bytes), more than "
                f"{MAX_EXPANSION_RATIO}×: store it uncompressed (np.savez) or as safetensors"
            )


NUMPY_TO_TORCH = {np.dtype(n): t for n, t in SAFETENSORS_DTYPES.values() if n is not None}


def _npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, header bytes) of a ``.npy`` stream, which is left at the start of the data."""
    try:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(fh, max_header_size=10_000)
    except ValueError as exc:
        raise TensorFileError(f"malformed .npy header: {exc}") from None
    if dtype.hasobject or dtype not in NUMPY_TO_TORCH:
        raise TensorFileError(f"unsupported dtype {dtype}")
    if fortran_order and len(shape) > 1:
        raise TensorFileError("Fortran-ordered arrays are not accepted; save a C-ordered array")
    return shape, dtype, fh.tell()


def scan_npz(
    path: str | Path, max_bytes: int, read_whole: tuple[str, ...] = ()
) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """Shapes, dtypes and finiteness of every array of an ``.npz``, read in bounded chunks after its declared sizes
    passed ``check_archive_sizes``; the arrays named in ``read_whole`` (small ones: labels) are also returned."""
    check_archive_sizes(path, max_bytes, "GIF_MAX_DATASET_BYTES")
    infos, whole = {}, {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.infolist():
            if not member.filename.endswith(".npy"):
                raise TensorFileError(f"{member.filename}: an .npz holds .npy members only")
            name = member.filename[: -len(".npy")]
            with zf.open(member) as fh:
                shape, dtype, header = _npy_header(fh)
                expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if member.file_size != header + expected:
                    raise TensorFileError(
                        f"{name}: its shape {list(shape)} does not match its {member.file_size} bytes"
                    )
                if name in read_whole:
                    whole[name] = torch.from_numpy(np.frombuffer(fh.read(expected), dtype=dtype).reshape(shape).copy())
                    infos[name] = TensorInfo.of(whole[name])
                    continue
                finite = True
                step = SCAN_CHUNK_BYTES - SCAN_CHUNK_BYTES % dtype.itemsize
                while finite and (chunk := fh.read(step)):
                    if dtype.kind == "f":
                        finite = bool(np.isfinite(np.frombuffer(chunk, dtype=dtype)).all())
                infos[name] = TensorInfo(tuple(shape), NUMPY_TO_TORCH[dtype], finite)
    return infos, whole


@dataclass(frozen=True)
class TensorInfo:
    """What validation needs to know about one stored tensor, without holding its values."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    finite: bool

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorInfo:
        finite = bool(torch.isfinite(tensor).all()) if tensor.is_floating_point() else True
        return cls(tuple(tensor.shape), tensor.dtype, finite)


def is_program_archive(names: list[str]) -> bool:
    """A zip whose entries are a ``torch.export`` archive (``<root>/archive_format`` beside ``<root>/models/``)."""
    return any(n.endswith("/archive_format") or n == "archive_format" for n in names) and any(
        "models/" in n for n in names
    )


def sniff_format(path: str | Path) -> str:
    """``"safetensors"``, ``"torch_zip"``, ``"npz"`` or ``"pt2"``; anything else (a raw pickle included) is refused."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise TensorFileError(f"corrupt zip archive: {exc}") from None
        if any(n.endswith(".npy") for n in names):
            return "npz"
        if is_program_archive(names):
            return "pt2"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_zip"
        raise TensorFileError("zip archive is neither a torch state dict, an .npz nor a .pt2 program")
    if head[:1] == b"\x80":
        raise TensorFileError("pickle files are refused; save with safetensors or torch.save (zip format)")
    raise TensorFileError("unrecognised file: expected safetensors, a torch zip state dict or .npz")


def read_safetensors_header(path: str | Path) -> tuple[int, dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and check the header: every tensor's byte range is inside the file and consistent with its shape.
    Returns (where the data starts, the tensors' entries, the string metadata)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise TensorFileError("truncated safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise TensorFileError("safetensors header length exceeds the file")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TensorFileError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise TensorFileError("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise TensorFileError("safetensors metadata must map names to strings")
    data_len = size - 8 - header_len
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise TensorFileError(f"{name}: malformed header entry")
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise TensorFileError(f"{name}: unsupported dtype {entry['dtype']}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise TensorFileError(f"{name}: malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise TensorFileError(f"{name}: malformed data offsets")
        start, end = offsets
        itemsize = SAFETENSORS_DTYPES[entry["dtype"]][1].itemsize
        if not 0 <= start <= end <= data_len or end - start != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise TensorFileError(f"{name}: data offsets do not match its shape or the file size")
    return 8 + header_len, header, metadata


def scan_safetensors(path: str | Path) -> dict[str, TensorInfo]:
    """Shapes, dtypes and finiteness of every tensor, reading values in bounded chunks (memory stays flat)."""
    base, header, _ = read_safetensors_header(path)
    infos = {}
    with open(path, "rb") as fh:
        for name, entry in header.items():
            np_dtype, torch_dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            start, end = entry["data_offsets"]
            finite = True
            if torch_dtype.is_floating_point:
                fh.seek(base + start)
                step = SCAN_CHUNK_BYTES - SCAN_CHUNK_BYTES % torch_dtype.itemsize
                remaining = end - start
                while remaining > 0 and finite:
                    chunk = fh.read(min(step, remaining))
                    remaining -= len(chunk)
                    if np_dtype is None:  # bfloat16: widen through torch
                        values = torch.frombuffer(bytearray(chunk), dtype=torch.bfloat16).float().numpy()
                    else:
                        values = np.frombuffer(chunk, dtype=np_dtype)
                    finite = bool(np.isfinite(values).all())
            infos[name] = TensorInfo(tuple(entry["shape"]), torch_dtype, finite)
    return infos


def read_safetensors_tensor(path: str | Path, name: str) -> torch.Tensor:
    """One tensor of a safetensors file, without loading the others."""
    read_safetensors_header(path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tensor: torch.Tensor = handle.get_tensor(name)
            return tensor
    except SafetensorError as exc:
        raise TensorFileError(f"unreadable safetensors file: {exc}") from None


def read_tensors(path: str | Path, allowed: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Load every tensor of a file whose format is in ``allowed``; raise ``TensorFileError`` otherwise.

    Torch zip files are memory-mapped: their tensors are read from the file as they are touched.
    """
    fmt = sniff_format(path)
    if fmt not in allowed:
        raise TensorFileError(f"{fmt} files are not accepted here (accepted: {', '.join(allowed)})")
    if fmt == "safetensors":
        read_safetensors_header(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise TensorFileError(f"unreadable safetensors file: {exc}") from None
    if fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {k: torch.from_numpy(np.array(archive[k])) for k in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise TensorFileError(f"unreadable .npz file: {exc}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for corrupt or disallowed archives
        raise TensorFileError(f"unreadable torch state dict: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise TensorFileError("the torch file must hold a flat state dict {name: tensor}")
    return dict(loaded)


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".part") -> None:
    """Call ``write(tmp_path)`` then rename into ``path``: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def write_safetensors_parts(
    path: str | Path,
    tensors: list[tuple[str, torch.dtype, tuple[int, ...], Iterator[bytes]]],
    metadata: dict[str, str] | None = None,
) -> None:
    """A safetensors file written from chunks of bytes, so a tensor larger than memory can be stored: each tensor's
    chunks must add up to its shape's bytes exactly (checked), in order."""
    dtype_names = {torch_dtype: name for name, (_, torch_dtype) in SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": dtype_names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors' own writer does

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(encoded)) + encoded)
            for name, _, _, chunks in tensors:
                start, end = header[name]["data_offsets"]
                written = 0
                for chunk in chunks:
                    fh.write(chunk)
                    written += len(chunk)
                if written != end - start:
                    raise ValueError(f"{name}: {written} bytes written for a tensor of {end - start}")

    atomic_write(path, write)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
