"""``python -m service.tools.buckets``: create the bucket ``GIF_STORAGE_URL`` names if it does not exist.

A one-off for a fresh S3-compatible server (``docker-compose.s3.yml`` runs it before the API and workers start).
"""

from __future__ import annotations

import sys

from service.core.settings import Settings
from service.core.storage import artifact_store
from service.core.storage.s3 import S3ArtifactStore


def main() -> int:
    settings = Settings()
    store = artifact_store(settings)
    if not isinstance(store, S3ArtifactStore):
        print("GIF_STORAGE_URL names no S3 bucket; nothing to create", file=sys.stderr)
        return 0
    created = store.ensure_bucket()
    print(f"bucket {store.bucket} {'created' if created else 'exists'}", file=sys.stderr)
    store.check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
