"""Content-addressed artifact storage: uploaded weights and data, edited checkpoints.

``ArtifactStore`` is the small interface the rest of the code uses (a local directory now; an
S3-compatible store would stage to a local file, upload on ``commit`` and cache on ``local_path``).
Files are written to a staging file in the store first and renamed to their sha256 only when
complete and validated, so nothing half-written is ever served, and a failed or interrupted write
leaves nothing behind. ``Artifacts`` adds reference counting in Redis: one blob may back several
records (the same file uploaded twice, a job's inputs), and it is deleted with its last reference.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import redis

from service.core.records import Keys

BLOB_LOCK_TIMEOUT_S = 30


class ArtifactStore(Protocol):
    def staging_file(self) -> AbstractContextManager[Path]:
        """A fresh, empty file in the store, removed on exit unless committed."""
        ...

    def commit(self, staged: Path, sha256: str) -> None:
        """Move a complete staged file to its content address (a no-op if that content is stored)."""
        ...

    def local_path(self, sha256: str) -> Path: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None: ...

    def check(self) -> None:
        """Raise if the store cannot be written (readiness)."""
        ...


class LocalArtifactStore:
    """Blobs at ``root/blobs/ab/<sha256>``; staging files at ``root/staging`` (one file system: renames are atomic)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.blobs = self.root / "blobs"

    @contextmanager
    def staging_file(self) -> Iterator[Path]:
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.staging, suffix=".part")
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def local_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def commit(self, staged: Path, sha256: str) -> None:
        target = self.local_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)

    def exists(self, sha256: str) -> bool:
        return self.local_path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self.local_path(sha256).unlink(missing_ok=True)

    def check(self) -> None:
        with self.staging_file() as path:
            path.write_bytes(b"ok")


class Artifacts:
    """A store whose blobs live while a reference (``"model:<id>"``, ``"job:<id>"``…) holds them.

    Adding and dropping references take a per-blob Redis lock, so a delete cannot remove a file
    that a concurrent upload of the same content has just referenced.
    """

    def __init__(self, store: ArtifactStore, client: redis.Redis, keys: Keys):
        self.store = store
        self.client = client
        self.keys = keys

    def add(self, staged: Path, sha256: str, ref: str) -> None:
        """Commit a staged file under ``ref``."""
        with self.client.lock(self.keys.blob_lock(sha256), timeout=BLOB_LOCK_TIMEOUT_S):
            self.client.sadd(self.keys.blob_refs(sha256), ref)
            self.store.commit(staged, sha256)

    def hold(self, sha256: str, ref: str) -> bool:
        """Add a reference to a stored blob; False if it is gone."""
        with self.client.lock(self.keys.blob_lock(sha256), timeout=BLOB_LOCK_TIMEOUT_S):
            if not self.store.exists(sha256):
                return False
            self.client.sadd(self.keys.blob_refs(sha256), ref)
            return True

    def release(self, sha256: str, ref: str) -> None:
        """Drop a reference; the blob goes with its last one."""
        with self.client.lock(self.keys.blob_lock(sha256), timeout=BLOB_LOCK_TIMEOUT_S):
            self.client.srem(self.keys.blob_refs(sha256), ref)
            if not self.client.scard(self.keys.blob_refs(sha256)):
                self.store.delete(sha256)

    def local_path(self, sha256: str) -> Path:
        return self.store.local_path(sha256)

    def size(self, sha256: str) -> int:
        return self.store.local_path(sha256).stat().st_size
