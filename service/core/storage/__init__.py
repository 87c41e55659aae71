"""Content-addressed artifact storage: uploaded weights and data, edited checkpoints.

``ArtifactStore`` (``base``) is the interface, with two implementations chosen by ``GIF_STORAGE_URL``: a local
directory (``local``; ``file:///path``, the default ``var/artifacts``) for one host, and an S3-compatible bucket
(``s3``; ``s3://bucket/prefix``) that workers on any number of hosts share. Files are written to a local staging
file first and published under their sha256 only when complete and validated, so nothing half-written is ever
served, and a failed or interrupted write leaves nothing behind (on S3 an object becomes visible only when its
multipart upload completes; its size is checked before the store reports it stored). ``Artifacts``
(``references``) adds reference counting in Redis: one blob may back several records (the same file uploaded twice,
a job's inputs), and it is deleted with its last reference. The rest of the code goes through ``Artifacts`` only.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from service.core.settings import Settings
from service.core.storage.base import ArtifactStore
from service.core.storage.local import LocalArtifactStore
from service.core.storage.s3 import S3ArtifactStore


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
