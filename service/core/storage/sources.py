"""Datasets that reach the service through the bucket rather than the request body (S3 store only).

Two ways in. *By reference*: an object (or a prefix of WebDataset shards) the operator allowed in
``GIF_DATA_URL_ALLOWED``; nothing else is ever read, no http(s) URL is ever fetched. *By presigned multipart
upload*: the client PUTs parts straight to ``<prefix>incoming/<upload id>`` in the store's bucket, resumes by asking
which parts S3 holds, and the API completes the upload. Either way the object is streamed, 1 MiB at a time, into a
staging file of bounded size (``GIF_MAX_UPLOAD_BYTES``) and validated from there exactly as an uploaded file: the
readers need a seekable file (a zip's directory is at its end; an image archive is read twice), and the staging
disk, not the API's memory, takes the size. The incoming object is never served: it is deleted once validated or
refused, and only the validated, content-addressed blob is stored.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import urlparse

import redis

from service.core.errors import ServiceError
from service.core.settings import Settings
from service.core.storage.base import CHUNK_BYTES
from service.core.storage.s3 import S3ArtifactStore, _reaching_s3

UPLOAD_ID_PREFIX = "upload_"
MAX_PARTS = 10_000  # S3's limit per multipart upload


def refused_url(detail: str) -> ServiceError:
    return ServiceError("validation-error", "the dataset URL cannot be used", [{"pointer": "/url", "detail": detail}])


@dataclass(frozen=True)
class DataSource:
    """An allowed object (``key``) or prefix of shards (``key`` ends with ``/``) in ``bucket``."""

    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key.endswith("/")


def allowed_source(url: str, settings: Settings, store: object) -> DataSource:
    """The object ``url`` names, if this service may read it: an S3 store, an ``s3://`` URL, and a location inside
    one of ``GIF_DATA_URL_ALLOWED`` (same bucket; the key equal to the allowed prefix or under it as a folder, so
    ``s3://b/data`` allows ``s3://b/data/x`` but not ``s3://b/database``). Refused with a 422 at ``/url`` otherwise."""
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise refused_url(f"only s3:// URLs are read (got {parsed.scheme or 'no'} scheme); nothing else is fetched")
    if not parsed.netloc or not parsed.path.strip("/") or parsed.query or parsed.fragment or parsed.params:
        raise refused_url("expected s3://bucket/key, or s3://bucket/prefix/ for WebDataset shards")
    if not isinstance(store, S3ArtifactStore):
        raise refused_url("this service's artifact store is not S3: upload the file instead")
    key = parsed.path.lstrip("/")
    if parsed.netloc == store.bucket and key.startswith((f"{store.prefix}blobs/", f"{store.prefix}incoming/")):
        raise refused_url("the service's own storage is not registered by URL (it holds every key's uploads)")
    for allowed in settings.data_url_allowed:
        where = urlparse(allowed)
        folder = where.path.strip("/")
        if where.netloc == parsed.netloc and (not folder or key == folder or key.startswith(folder + "/")):
            return DataSource(parsed.netloc, key)
    if not settings.data_url_allowed:
        raise refused_url("this service registers no data by URL (GIF_DATA_URL_ALLOWED is empty)")
    raise refused_url("outside the locations this service may read (GIF_DATA_URL_ALLOWED)")


def _copy_capped(source: IO[bytes], target: BinaryIO, budget: int, what: str) -> int:
    """Copy a stream in 1 MiB chunks, refusing it (413) once it passes ``budget`` bytes; the bytes copied."""
    copied = 0
    while block := source.read(CHUNK_BYTES):
        copied += len(block)
        if copied > budget:
            raise ServiceError("payload-too-large", f"{what} is larger than the {budget} bytes an upload may be")
        target.write(block)
    return copied


@_reaching_s3  # a server lost mid-stream is a 503 (StoreUnavailable), as for any other S3 read
def stage_source(store: S3ArtifactStore, source: DataSource, staged: Path, max_bytes: int) -> str:
    """Stream the object, or the prefix's ``.tar`` shards joined into one tar, into ``staged``; its file name.

    Shards are joined member by member (headers parsed, contents copied, nothing extracted): the image reader then
    checks every member as it checks an uploaded shard, and a duplicate key across shards is refused there."""
    if not source.is_prefix:
        size = store.object_size(source.bucket, source.key)
        if size is None:
            raise refused_url(f"no object {source.url} (or it cannot be read)")
        if size > max_bytes:
            raise ServiceError("payload-too-large", f"{source.url} has {size} bytes, over the {max_bytes} allowed")
        with open(staged, "wb") as out:
            _copy_capped(store.object_stream(source.bucket, source.key), out, max_bytes, source.url)
        return source.key.rsplit("/", 1)[-1]
    shards = [(key, size) for key, size in store.object_keys(source.bucket, source.key) if key.endswith(".tar")]
    if not shards:
        raise refused_url(f"no .tar shards under {source.url}")
    if sum(size for _, size in shards) > max_bytes:
        raise ServiceError("payload-too-large", f"the shards under {source.url} pass the {max_bytes} bytes allowed")
    with tarfile.open(staged, "w", format=tarfile.PAX_FORMAT) as joined:
        for key, _ in shards:
            try:
                with tarfile.open(fileobj=store.object_stream(source.bucket, key), mode="r|") as shard:
                    for member in shard:
                        joined.addfile(member, shard.extractfile(member) if member.isfile() else None)
            except tarfile.TarError as exc:
                raise ServiceError(
                    "invalid-dataset",
                    f"s3://{source.bucket}/{key} is not a readable tar: {exc}",
                    [{"pointer": "/url", "detail": f"s3://{source.bucket}/{key}: {exc}"}],
                ) from None
    return source.key.rstrip("/").rsplit("/", 1)[-1] + ".tar"


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass
class DirectUpload:
    """A presigned multipart upload in progress, as Redis keeps it (``Keys``' prefix, ``dataset-upload:<id>``)."""

    id: str
    owner: str
    key: str
    s3_upload_id: str
    size_bytes: int
    part_bytes: int
    filename: str | None
    classes: list[str] | None
    expires_at: float

    @property
    def part_count(self) -> int:
        return max(1, -(-self.size_bytes // self.part_bytes))


class DirectUploads:
    """Presigned multipart dataset uploads: start, tell which parts S3 holds (to resume), complete, abort."""

    def __init__(self, store: object, client: redis.Redis, settings: Settings):
        self._store = store if isinstance(store, S3ArtifactStore) else None
        self.client, self.settings = client, settings

    def require_s3(self) -> S3ArtifactStore:
        """The S3 store; a 409 where the service stores locally (and so no presigned upload can be in progress)."""
        if self._store is None:
            raise ServiceError(
                "conflict",
                "presigned uploads need an S3 artifact store; this service stores locally: POST /v1/datasets instead",
            )
        return self._store

    def _redis_key(self, upload_id: str) -> str:
        return f"{self.settings.key_prefix}:dataset-upload:{upload_id}"

    def start(self, owner: str, size_bytes: int, filename: str | None, classes: list[str] | None) -> DirectUpload:
        part_bytes = max(self.settings.direct_upload_part_bytes, -(-size_bytes // MAX_PARTS))
        upload_id = UPLOAD_ID_PREFIX + secrets.token_hex(10)
        store = self.require_s3()
        key = f"{store.prefix}incoming/{upload_id}"
        upload = DirectUpload(
            upload_id,
            owner,
            key,
            store.start_multipart(key),
            size_bytes,
            part_bytes,
            filename,
            classes,
            time.time() + self.settings.direct_upload_expiry_s,
        )
        self.client.set(
            self._redis_key(upload_id), json.dumps(upload.__dict__), ex=self.settings.direct_upload_expiry_s
        )
        return upload

    def get(self, upload_id: str, owner: str) -> DirectUpload:
        raw = self.client.get(self._redis_key(upload_id)) if upload_id.startswith(UPLOAD_ID_PREFIX) else None
        upload = DirectUpload(**json.loads(raw)) if raw else None
        if upload is None or upload.owner != owner or self._store is None:
            raise ServiceError("not-found", f"no dataset upload {upload_id!r} in progress")
        return upload

    def state(self, upload: DirectUpload) -> dict[str, Any]:
        """The upload as the client sees it: the parts S3 holds, and a fresh URL for each part still missing."""
        store = self.require_s3()
        done = store.uploaded_parts(upload.key, upload.s3_upload_id)
        if done is None:
            self.forget(upload)
            raise ServiceError("not-found", f"the dataset upload {upload.id} expired or was aborted")
        held = {p["number"] for p in done}
        expiry = max(1, int(upload.expires_at - time.time()))
        missing = [
            {"number": n, "url": store.presign_part(upload.key, upload.s3_upload_id, n, expiry)}
            for n in range(1, upload.part_count + 1)
            if n not in held
        ]
        return {
            "id": upload.id,
            "size_bytes": upload.size_bytes,
            "part_size_bytes": upload.part_bytes,
            "part_count": upload.part_count,
            "expires_in_s": expiry,
            "parts_done": done,
            "parts": missing,
        }

    def assemble(self, upload: DirectUpload) -> None:
        """Complete the multipart upload once every part is there and their sizes add up to the declared size."""
        store = self.require_s3()
        done = store.uploaded_parts(upload.key, upload.s3_upload_id)
        if done is None and store.object_size(store.bucket, upload.key) == upload.size_bytes:
            return  # completed by an earlier call whose check then found the store unavailable: check it again
        if done is None:
            self.forget(upload)
            raise ServiceError("not-found", f"the dataset upload {upload.id} expired or was aborted")
        numbers = sorted(p["number"] for p in done)
        missing = sorted(set(range(1, upload.part_count + 1)) - set(numbers))
        total = sum(p["size_bytes"] for p in done)
        if missing or total != upload.size_bytes or numbers[-1] != upload.part_count:
            raise ServiceError(
                "conflict",
                f"the upload is not complete: parts {missing[:20]} missing; {total} of {upload.size_bytes} bytes "
                "received (GET the upload for the missing parts' URLs)",
            )
        store.complete_multipart(upload.key, upload.s3_upload_id, sorted(done, key=lambda p: p["number"]))

    def source(self, upload: DirectUpload) -> DataSource:
        return DataSource(self.require_s3().bucket, upload.key)

    def forget(self, upload: DirectUpload) -> None:
        """Drop every trace of the upload: its parts or object in the bucket and its record."""
        store = self.require_s3()
        store.abort_multipart(upload.key, upload.s3_upload_id)
        store.delete_object(upload.key)
        self.client.delete(self._redis_key(upload.id))
