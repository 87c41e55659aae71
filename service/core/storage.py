"""Content-addressed artifact storage: uploaded weights and data, edited checkpoints.

``ArtifactStore`` is the small interface the rest of the code uses, with two implementations chosen by
``GIF_STORAGE_URL``: a local directory (``file:///path``, the default ``var/artifacts``) for one host, and an
S3-compatible bucket (``s3://bucket/prefix``) that workers on any number of hosts share. Files are written to
a local staging file first and published under their sha256 only when complete and validated, so nothing
half-written is ever served, and a failed or interrupted write leaves nothing behind (on S3 an object becomes
visible only when its multipart upload completes; its size is checked before the store reports it stored).
``Artifacts`` adds reference counting in Redis: one blob may back several records (the same file uploaded
twice, a job's inputs), and it is deleted with its last reference.

A full disk is an ``OSError`` of errno ENOSPC (or EDQUOT), whether a write hit it or ``require_room`` foresaw it
(``StorageFull``, with the shortfall in words): the API answers 507 storage-full, a job fails storage-full
(retryable), and the staging file is removed either way, so nothing half-written is kept. An S3 server that cannot
be reached, cuts a transfer off or fails (5xx) after the client's bounded retries is ``StoreUnavailable`` (an
``OSError`` too, so readiness reports the store down): a 503 for a request, a retryable failure for a job.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar
from urllib.parse import urlparse

import redis

from service.core.records import Keys
from service.core.settings import Settings

BLOB_LOCK_TIMEOUT_S = 30
CHUNK_BYTES = 1 << 20
S3_PART_BYTES = 16 * 1024**2
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


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


def require_room(store: ArtifactStore, needed_bytes: int, reserve_bytes: int, what: str) -> None:
    """Raise ``StorageFull`` unless writing ``needed_bytes`` (``what``: an upload, a checkpoint) would leave at least
    ``reserve_bytes`` (``GIF_MIN_FREE_BYTES``) free on the store's disk. A reserve of 0 turns the check off. The
    free space is read now, not cached: the store serves again as soon as space is freed."""
    if not reserve_bytes:
        return
    free = store.free_bytes()
    needed = needed_bytes + reserve_bytes
    if free < needed:
        raise StorageFull(
            f"the artifact store's disk has {free} bytes free ({_mib(free)}); {what} needs {needed} "
            f"({_mib(needed_bytes)} for it + GIF_MIN_FREE_BYTES {_mib(reserve_bytes)} kept free): "
            f"{needed - free} bytes short"
        )


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


P = ParamSpec("P")
R = TypeVar("R")


def _server_failure(exc: BaseException) -> bool:
    """Whether an S3 call failed for want of a server (refused, cut off, timed out, or a 5xx), not for the request:
    botocore's connection errors, s3transfer's exhausted download retries, and an upload failure that wraps either."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceededError

    if isinstance(exc, BotoConnectionError | HTTPClientError | RetriesExceededError | TransferRetriesExceededError):
        return True
    if isinstance(exc, S3UploadFailedError):  # boto3 raises it while handling the ClientError it replaces
        return exc.__context__ is not None and _server_failure(exc.__context__)
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) >= 500
    return False


def _reaching_s3(method: Callable[P, R]) -> Callable[P, R]:
    """An S3 method whose server failures are ``StoreUnavailable``: callers handle one exception, whichever botocore,
    boto3 or s3transfer raised, and readiness (which treats an ``OSError`` as a store that cannot be written) too."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            if not _server_failure(exc):
                raise
            raise StoreUnavailable(f"the S3 server is unavailable: {exc}") from exc

    return call


class S3ArtifactStore:
    """Blobs at ``s3://bucket/<prefix>blobs/ab/<sha256>``; staging files and a read cache in a local directory.

    Workers on other hosts fetch inputs into their own cache (verified against the sha256, then kept until the
    cache passes ``cache_bytes``); uploads go up in parts (bounded memory) and downloads stream, or redirect to
    a presigned URL when ``presign_expiry_s`` is set. Credentials come from the standard AWS variables. A server
    that is down costs a bounded wait: ``connect_timeout_s`` per attempt, ``retries`` retries with backoff.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        cache_dir: Path,
        endpoint_url: str | None = None,
        presign_expiry_s: int | None = None,
        cache_bytes: int = 20 * 1024**3,
        connect_timeout_s: float = 5.0,
        retries: int = 5,
    ):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.cache = LocalArtifactStore(cache_dir)
        self.presign_expiry_s, self.cache_bytes = presign_expiry_s, cache_bytes
        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=connect_timeout_s,
                retries={"max_attempts": retries, "mode": "standard"},  # retries after the first attempt
                s3={"addressing_style": "path"},
            ),
        )
        # 16 MiB parts, four at a time: an upload or a fetch holds at most ~64 MiB, whatever the file's size.
        self.transfer = TransferConfig(
            multipart_threshold=S3_PART_BYTES, multipart_chunksize=S3_PART_BYTES, max_concurrency=4
        )

    def key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{check_sha256(sha256)[:2]}/{sha256}"

    def staging_file(self) -> AbstractContextManager[Path]:
        return self.cache.staging_file()

    @_reaching_s3
    def commit(self, staged: Path, sha256: str) -> None:
        if not self.exists(sha256):
            self.s3.upload_file(str(staged), self.bucket, self.key(sha256), Config=self.transfer)
            stored = self.size(sha256)
            if stored != staged.stat().st_size:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key(sha256))
                raise OSError(f"S3 stored {stored} bytes of {staged.stat().st_size} for {sha256}; removed")
        self.cache.commit(staged, sha256)  # the uploading host keeps its copy: the worker that runs next may be here
        self.cache.prune(self.cache_bytes)

    @_reaching_s3
    def local_path(self, sha256: str) -> Path:
        path = self.cache.local_path(sha256)
        if path.is_file():
            os.utime(path)  # recently used: the cache keeps it longest
            return path
        with self.cache.staging_file() as staged:
            try:
                self.s3.download_file(self.bucket, self.key(sha256), str(staged), Config=self.transfer)
            except self.s3.exceptions.ClientError as exc:
                if _not_found(exc):
                    raise FileNotFoundError(f"no blob {sha256} in s3://{self.bucket}/{self.prefix}") from None
                raise
            with open(staged, "rb") as fh:
                actual = hashlib.file_digest(fh, "sha256").hexdigest()
            if actual != sha256:
                raise OSError(f"the blob fetched from S3 as {sha256} hashes to {actual}; not used")
            self.cache.commit(staged, sha256)
        self.cache.prune(self.cache_bytes)
        return path

    @_reaching_s3
    def exists(self, sha256: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except self.s3.exceptions.ClientError as exc:
            if _not_found(exc):
                return False
            raise
        return True

    @_reaching_s3
    def size(self, sha256: str) -> int:
        return int(self.s3.head_object(Bucket=self.bucket, Key=self.key(sha256))["ContentLength"])

    @_reaching_s3
    def delete(self, sha256: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        self.cache.delete(sha256)

    @_reaching_s3
    def download(self, sha256: str, filename: str) -> BlobDownload:
        if self.presign_expiry_s:
            url = self.s3.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self.key(sha256),
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=self.presign_expiry_s,
            )
            return BlobDownload(size=self.size(sha256), url=url)
        body = self.s3.get_object(Bucket=self.bucket, Key=self.key(sha256))
        return BlobDownload(size=int(body["ContentLength"]), chunks=body["Body"].iter_chunks(CHUNK_BYTES))

    @_reaching_s3
    def names(self) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}blobs/")
        return {item["Key"].rsplit("/", 1)[1] for page in pages for item in page.get("Contents", [])}

    @_reaching_s3
    def check(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)
        self.cache.check()

    def free_bytes(self) -> int:
        return self.cache.free_bytes()  # uploads and checkpoints are staged here before they go to the bucket

    @_reaching_s3
    def ensure_bucket(self) -> bool:
        """Create the bucket if it does not exist; True if it was created."""
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return False
        except self.s3.exceptions.ClientError as exc:
            if not _not_found(exc):
                raise
        self.s3.create_bucket(Bucket=self.bucket)
        return True


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store ``GIF_STORAGE_URL`` names (default: the local directory ``GIF_STORAGE_DIR``)."""
    url = urlparse(settings.storage_url or "")
    if url.scheme == "s3":
        return S3ArtifactStore(
            url.netloc,
            url.path.strip("/") + "/" if url.path.strip("/") else "",
            settings.storage_dir,
            settings.s3_endpoint_url,
            settings.s3_presign_expiry_s,
            settings.storage_cache_bytes,
            settings.s3_connect_timeout_s,
            settings.s3_retries,
        )
    return LocalArtifactStore(Path(url.path) if url.scheme == "file" else settings.storage_dir)


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
