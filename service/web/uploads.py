"""Uploads that stream to disk: a multipart reader that hashes as it writes.

Starlette's own form parsing spools files to the system temp directory and leaves the size open;
here the one file part goes straight into a staging file of the artifact store and is hashed
(sha256) on the way, while ``service.web.middleware.BodyLimit`` cuts the body off with a 413 as
soon as it passes the route's cap. The parser runs in a thread, one ~1 MiB batch at a time, so a
large upload does not stall the event loop; concurrent uploads take turns (``upload_limiter``). It reads any
async byte stream: no web framework here.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

from service.core.errors import ServiceError

PARSE_BATCH_BYTES = 1 << 20
MAX_TEXT_FIELD_BYTES = 64 * 1024


@dataclass
class Upload:
    """What a multipart upload held: its text fields and, if present, the file written to ``path``."""

    path: Path
    fields: dict[str, str] = field(default_factory=dict)
    has_file: bool = False
    filename: str | None = None
    sha256: str = ""
    size_bytes: int = 0


class _Sink:
    """The parser's callbacks: headers per part, file data to disk (hashed), small text fields to memory."""

    def __init__(self, upload: Upload, file_field: str, text_fields: frozenset[str]):
        self.upload = upload
        self.file_field = file_field
        self.text_fields = text_fields
        self.hasher = hashlib.sha256()
        self.out: BinaryIO | None = None
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._name: str | None = None
        self._text = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._name, self._text = None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._header_value))
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            if self._name == self.file_field and b"filename" in options:
                self.upload.filename = options[b"filename"].decode("utf-8", "replace")
        self._header_name, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        name = self._name
        if name == self.file_field:
            if self.upload.has_file or self.out is not None:
                raise _invalid(f"/{name}", "send one file only")
            self.out = open(self.upload.path, "wb")  # noqa: SIM115 -- written across parser callbacks, closed in close()
        elif name not in self.text_fields:
            raise _invalid(f"/{name or ''}", f"unexpected form field {name!r}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.out is not None:
            self.out.write(chunk)
            self.hasher.update(chunk)
            self.upload.size_bytes += len(chunk)
        else:
            self._text += chunk
            if len(self._text) > MAX_TEXT_FIELD_BYTES:
                raise _invalid(f"/{self._name}", f"longer than {MAX_TEXT_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
            self.upload.has_file = True
            self.upload.sha256 = self.hasher.hexdigest()
        elif self._name is not None:
            try:
                self.upload.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid(f"/{self._name}", "not UTF-8 text") from None

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


@functools.cache
def upload_limiter() -> anyio.CapacityLimiter:
    """One thread at a time parses, hashes and validates uploads, however many arrive at once: they are CPU-bound,
    and more threads only take the cores from the event loop (8 concurrent 256 MiB uploads on 2 cores: polls' p50
    9 ms → 2 ms). Created on first use, inside the running event loop."""
    return anyio.CapacityLimiter(1)


def _invalid(pointer: str, detail: str) -> ServiceError:
    return ServiceError("validation-error", "the form is invalid", [{"pointer": pointer, "detail": detail}])


async def receive_upload(
    content_type_header: str | None,
    body: AsyncIterator[bytes],
    staged: Path,
    file_field: str,
    text_fields: frozenset[str],
) -> Upload:
    """Read a ``multipart/form-data`` body: the ``file_field`` part into ``staged``, text fields into memory."""
    content_type, options = parse_options_header(content_type_header)
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise ServiceError("unsupported-media-type", f"expected multipart/form-data, got {shown}")
    if not options.get(b"boundary"):
        raise ServiceError("bad-request", "the multipart/form-data content type has no boundary")
    upload = Upload(staged)
    sink = _Sink(upload, file_field, text_fields)
    try:
        parser = MultipartParser(options[b"boundary"], sink.callbacks())
        batch = bytearray()
        async for chunk in body:
            batch += chunk
            if len(batch) >= PARSE_BATCH_BYTES:
                await anyio.to_thread.run_sync(parser.write, bytes(batch), limiter=upload_limiter())
                batch.clear()
        await anyio.to_thread.run_sync(parser.write, bytes(batch), limiter=upload_limiter())
        parser.finalize()
    except FormParserError as exc:
        raise ServiceError("bad-request", f"malformed multipart body: {exc}") from None
    finally:
        sink.close()
    if not sink.ended:
        raise ServiceError("bad-request", "the multipart body ends before its closing boundary")
    return upload
