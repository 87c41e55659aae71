"""The store every host shares: an S3-compatible bucket (``s3://bucket/prefix``), with a local staging directory and
read cache per host."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, ParamSpec, TypeVar

from service.core.storage.base import CHUNK_BYTES, BlobDownload, StoreUnavailable, check_sha256
from service.core.storage.local import LocalArtifactStore

S3_PART_BYTES = 16 * 1024**2

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

    # --- objects outside the store: data registered by reference, and presigned dataset uploads -------------

    @_reaching_s3
    def object_size(self, bucket: str, key: str) -> int | None:
        """The size of ``s3://bucket/key`` (any bucket the store's credentials reach), or None if there is none."""
        try:
            return int(self.s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except self.s3.exceptions.ClientError as exc:
            if _not_found(exc) or _status(exc) == 403:
                return None
            raise

    @_reaching_s3
    def object_keys(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        """Every (key, size) under ``s3://bucket/prefix``, in key order."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted((item["Key"], int(item["Size"])) for page in pages for item in page.get("Contents", []))

    @_reaching_s3
    def object_stream(self, bucket: str, key: str) -> BinaryIO:
        """The object's bytes as a stream read from the server as they are consumed (never held whole)."""
        body: BinaryIO = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        return body

    @_reaching_s3
    def delete_object(self, key: str) -> None:
        """Remove an object of the store's bucket that is no blob (a presigned upload's object)."""
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    @_reaching_s3
    def start_multipart(self, key: str) -> str:
        """Open a multipart upload to ``key`` in the store's bucket; its S3 upload id."""
        return str(self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"])

    def presign_part(self, key: str, upload_id: str, number: int, expiry_s: int) -> str:
        """A URL that PUTs part ``number`` of the multipart upload, valid ``expiry_s`` seconds (signed offline)."""
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number}
        return str(self.s3.generate_presigned_url("upload_part", Params=params, ExpiresIn=expiry_s))

    @_reaching_s3
    def uploaded_parts(self, key: str, upload_id: str) -> list[dict[str, Any]] | None:
        """The parts S3 holds of the upload (``number``, ``etag``, ``size_bytes``), or None if the upload is gone."""
        parts: list[dict[str, Any]] = []
        try:
            pages = self.s3.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
            for page in pages:
                parts += [
                    {"number": int(p["PartNumber"]), "etag": p["ETag"], "size_bytes": int(p["Size"])}
                    for p in page.get("Parts", [])
                ]
        except self.s3.exceptions.ClientError as exc:
            if _status(exc) == 404 or _not_found(exc) or "NoSuchUpload" in str(exc):
                return None
            raise
        return parts

    @_reaching_s3
    def complete_multipart(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        done = [{"PartNumber": p["number"], "ETag": p["etag"]} for p in parts]
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
        )

    @_reaching_s3
    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except self.s3.exceptions.ClientError as exc:
            if not (_status(exc) == 404 or _not_found(exc) or "NoSuchUpload" in str(exc)):
                raise

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


def _status(exc: Exception) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}
