"""What every artifact store is and how it fails: the ``ArtifactStore`` interface, a download's forms, and the two
failures callers handle.

A full disk is an ``OSError`` of errno ENOSPC (or EDQUOT), whether a write hit it or the store foresaw it
(``StorageFull`` from ``Artifacts.require_room``, with the shortfall in words): the API answers 507 storage-full, a
job fails storage-full (retryable), and the staging file is removed either way, so nothing half-written is kept. An
S3 server that cannot be reached, cuts a transfer off or fails (5xx) after the client's bounded retries is
``StoreUnavailable`` (an ``OSError`` too, so readiness reports the store down): a 503 for a request, a retryable
failure for a job.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK_BYTES = 1 << 20
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(OSError):
    """The store's disk has no room for a write (errno ENOSPC): refused up front by ``require_room``, or found out by
    a write that failed. The request or job may succeed once space is freed."""

    def __init__(self, detail: str):
        super().__init__(errno.ENOSPC, detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class StoreUnavailable(ConnectionError):
    """The S3 server could not be reached, cut the transfer off or failed, after the client's retries: nothing is
    wrong with the request, and the same request may succeed once the server is back."""


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that found the disk (or the user's quota on it) full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class ArtifactStore(Protocol):
    def staging_file(self) -> AbstractContextManager[Path]:
        """A fresh, empty file in the store, removed on exit unless committed."""
        ...

    def commit(self, staged: Path, sha256: str) -> None:
        """Move a complete staged file to its content address (a no-op if that content is stored)."""
        ...

    def local_path(self, sha256: str) -> Path:
        """A local file with the blob's bytes (S3: fetched into the host's cache once, its sha256 verified)."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def delete(self, sha256: str) -> None: ...

    def download(self, sha256: str, filename: str) -> BlobDownload:
        """How to serve the blob: a local file, a stream of chunks, or a presigned URL to redirect to."""
        ...

    def names(self) -> set[str]:
        """Every stored sha256 (audits and tests: what is stored should be what is referenced)."""
        ...

    def check(self) -> None:
        """Raise if the store cannot be written (readiness)."""
        ...

    def free_bytes(self) -> int:
        """Free bytes on the disk that receives uploads and checkpoints (its staging directory), read now."""
        ...


@dataclass
class BlobDownload:
    """One of: ``path`` (send the file), ``chunks`` (stream them; ``size`` bytes), ``url`` (redirect there)."""

    size: int
    path: Path | None = None
    chunks: Iterator[bytes] | None = None
    url: str | None = None


def check_sha256(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return sha256
