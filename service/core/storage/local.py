"""The store of one host: a local directory (``file:///path``, the default ``GIF_STORAGE_DIR``), and the read
cache of the S3 store."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.core.storage.base import BlobDownload, check_sha256


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
        return self.blobs / check_sha256(sha256)[:2] / sha256

    def commit(self, staged: Path, sha256: str) -> None:
        target = self.local_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)

    def exists(self, sha256: str) -> bool:
        return self.local_path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.local_path(sha256).stat().st_size

    def delete(self, sha256: str) -> None:
        self.local_path(sha256).unlink(missing_ok=True)

    def download(self, sha256: str, filename: str) -> BlobDownload:
        path = self.local_path(sha256)
        return BlobDownload(size=path.stat().st_size, path=path)

    def names(self) -> set[str]:
        return {p.name for p in self.blobs.glob("*/*") if p.is_file()}

    def check(self) -> None:
        with self.staging_file() as path:
            path.write_bytes(b"ok")

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def prune(self, keep_bytes: int) -> None:
        """Delete the least recently used blobs until at most ``keep_bytes`` remain (for a cache, not a store)."""
        blobs = sorted((p.stat().st_atime, p.stat().st_size, p) for p in self.blobs.glob("*/*") if p.is_file())
        total = sum(size for _, size, _ in blobs)
        for _, size, path in blobs:
            if total <= keep_bytes:
                return
            path.unlink(missing_ok=True)
            total -= size
