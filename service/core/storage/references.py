"""Reference counting over a store: the one door the service and the workers use to store and read artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from service.core.records import Keys
from service.core.storage.base import ArtifactStore, BlobDownload, StorageFull

BLOB_LOCK_TIMEOUT_S = 30


class Artifacts:
    """A store whose blobs live while a reference (``"model:<id>"``, ``"job:<id>"``…) holds them.

    Adding and dropping references take a per-blob Redis lock, so a delete cannot remove a file
    that a concurrent upload of the same content has just referenced. The lock covers the reference only, never the
    upload itself: an S3 upload may outlast any lock timeout, and a content address makes committing twice harmless.
    """

    def __init__(self, store: ArtifactStore, client: redis.Redis, keys: Keys):
        self.store = store
        self.client = client
        self.keys = keys

    def add(self, staged: Path, sha256: str, ref: str) -> None:
        """Commit a staged file under ``ref``: the reference first (no concurrent release can then delete the blob),
        the bytes after, outside the lock; a commit that fails takes its reference back."""
        with self.client.lock(self.keys.blob_lock(sha256), timeout=BLOB_LOCK_TIMEOUT_S):
            self.client.sadd(self.keys.blob_refs(sha256), ref)
        try:
            self.store.commit(staged, sha256)
        except BaseException:
            self.release(sha256, ref)
            raise

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
        return self.store.size(sha256)

    @contextmanager
    def staging_file(self) -> Iterator[Path]:
        """A fresh file to write an artifact into before ``add`` (removed on exit unless added)."""
        with self.store.staging_file() as staged:
            yield staged

    def download(self, sha256: str, filename: str) -> BlobDownload:
        return self.store.download(sha256, filename)

    def check(self) -> None:
        """Raise (an ``OSError``) if the store cannot be written: readiness."""
        self.store.check()

    def free_bytes(self) -> int:
        return self.store.free_bytes()

    def require_room(self, needed_bytes: int, reserve_bytes: int, what: str) -> None:
        """Raise ``StorageFull`` unless writing ``needed_bytes`` (``what``: an upload, a checkpoint) would leave at
        least ``reserve_bytes`` (``GIF_MIN_FREE_BYTES``) free on the store's disk. A reserve of 0 turns the check off.
        The free space is read now, not cached: the store serves again as soon as space is freed."""
        if not reserve_bytes:
            return
        free = self.free_bytes()
        needed = needed_bytes + reserve_bytes
        if free < needed:
            raise StorageFull(
                f"the artifact store's disk has {free} bytes free ({_mib(free)}); {what} needs {needed} "
                f"({_mib(needed_bytes)} for it + GIF_MIN_FREE_BYTES {_mib(reserve_bytes)} kept free): "
                f"{needed - free} bytes short"
            )


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"
