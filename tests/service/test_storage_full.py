"""A full disk under the artifact store (issue 25, item 4): an upload that would leave less than
``GIF_MIN_FREE_BYTES`` free is refused before its body is read (507 storage-full, naming the shortfall), an upload
whose write runs out of disk is a 507 too, a job without room for its checkpoint fails storage-full (retryable);
nothing half-written is kept or served, /readyz says why, and everything serves again once space is freed.

The disk is real: a 16 MiB tmpfs that the test mounts where it may (as root), else the test's own directory, with
the reserve set just below its free space. A ballast file, allocated at once (no bytes written), takes the room and
gives it back. Where a write must really meet a full disk and no tmpfs can be mounted, an upload's staging file is a
link to /dev/full, whose writes the kernel answers with ENOSPC; a job's checkpoint (written by safetensors into a
file of its own) cannot be sent there, and that one test is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.core.context import ServiceContext
from service.core.settings import Settings
from service.web.app import create_app
from tests.service.conftest import serving
from tests.support import SuiteClient

MiB = 1024**2
TMPFS_BYTES = 16 * MiB


@dataclass
class Disk:
    """A file system for the store, with the ``GIF_MIN_FREE_BYTES`` that suits it and a ballast to fill it."""

    path: Path
    reserve: int
    margin: int  # how far below the reserve ``short`` goes: more on a shared disk, whose free space moves
    tmpfs: bool

    @property
    def ballast(self) -> Path:
        return self.path / "ballast"

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, leave: int) -> None:
        """Take the free space but ``leave`` bytes (at once: the ballast is allocated, not written)."""
        with open(self.ballast, "ab") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size + self.free() - leave)

    def short(self) -> None:
        """Less free than the reserve."""
        self.fill(self.reserve - self.margin)
        assert self.free() < self.reserve

    def relieve(self) -> None:
        """Space freed: the ballast goes."""
        self.ballast.unlink(missing_ok=True)


def mount_tmpfs(path: Path, size: int) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)]
    return subprocess.run(mount, capture_output=True).returncode == 0


@pytest.fixture
def disk(tmp_path) -> Iterator[Disk]:
    path = tmp_path / "disk"
    path.mkdir()
    if mount_tmpfs(path, TMPFS_BYTES):
        try:
            yield Disk(path, reserve=8 * MiB, margin=2 * MiB, tmpfs=True)
        finally:
            subprocess.run(["umount", "-l", str(path)], check=True)
        return
    shared = Disk(path, reserve=shutil.disk_usage(path).free - 64 * MiB, margin=64 * MiB, tmpfs=False)
    try:
        yield shared
    finally:
        shared.relieve()


@contextmanager
def app_on(isolated_settings, disk: Disk, **overrides) -> Iterator[tuple[SuiteClient, ServiceContext]]:
    """The API in-process with its store on ``disk`` (no worker on its queue)."""
    with isolated_settings(**overrides) as settings:
        settings = settings.model_copy(update={"storage_dir": disk.path})
        with TestClient(create_app(settings)) as http:
            yield SuiteClient(http=http), http.app.state.context  # type: ignore[attr-defined]


@contextmanager
def stack_on(isolated_settings, start_worker, disk: Disk, **overrides) -> Iterator[tuple[SuiteClient, ServiceContext]]:
    """The API in-process and a worker process, both with their store on ``disk``."""
    windows = {"heartbeat_ttl_s": 2.0, "reaper_interval_s": 0.5, "progress_interval_s": 0.1, "worker_torch_threads": 1}
    with isolated_settings(**windows, **overrides) as settings:
        settings = settings.model_copy(update={"storage_dir": disk.path})
        with start_worker(settings), TestClient(create_app(settings)) as http:
            yield SuiteClient(http=http), http.app.state.context  # type: ignore[attr-defined]


def assert_nothing_dangling(ctx: ServiceContext, settings: Settings | None = None) -> set[str]:
    """What the store holds is exactly what Redis references, and no staging file is left; returns the blobs."""
    settings = settings or ctx.settings
    referenced = {key.split(":")[-2] for key in ctx.client.scan_iter(ctx.artifacts.keys.blob_refs("*"))}
    stored = ctx.artifacts.store.names()
    assert stored == referenced, f"stored, not referenced: {stored - referenced}; the reverse: {referenced - stored}"
    assert not list((settings.storage_dir / "staging").glob("*")), "a staging file was left behind"
    return stored


def readiness(api: SuiteClient) -> dict[str, str]:
    ready = api.http.get("/readyz")
    assert ready.status_code == 200, ready.text  # a full disk degrades the service; it stays ready to serve reads
    return ready.json()


def test_an_upload_that_would_leave_less_than_the_reserve_is_refused_until_space_is_freed(
    isolated_settings, disk, demo, problem
):
    with app_on(isolated_settings, disk, min_free_bytes=disk.reserve) as (api, ctx):
        model = api.upload_model(demo["model"], json.loads(demo["architecture"].read_text()))
        assert readiness(api)["storage"] == "ok"
        disk.short()
        free = disk.free()
        with open(demo["train"], "rb") as fh:
            refused = api.http.post("/v1/datasets", files={"file": ("train.safetensors", fh)})
        body = problem(refused, 507, "storage-full")
        declared = int(refused.request.headers["content-length"])
        short = declared + disk.reserve - free
        assert f"has {free} bytes free" in body["detail"] and f"{short} bytes short" in body["detail"], body
        assert api.http.get("/v1/datasets").json()["items"] == []
        assert assert_nothing_dangling(ctx) == {model["sha256"]}
        ready = readiness(api)
        assert ready["status"] == "degraded" and ready["storage"] == "low on space", ready
        assert f"has {free} bytes free" in ready["reason"] and "uploads are refused" in ready["reason"]
        assert api.http.get(f"/v1/models/{model['id']}").status_code == 200  # reads are served meanwhile
        disk.relieve()
        assert readiness(api)["storage"] == "ok"  # read live: no restart, no cache to expire
        stored = api.upload_dataset(demo["train"])
        assert assert_nothing_dangling(ctx) == {model["sha256"], stored["sha256"]}


def test_an_upload_declaring_more_than_the_disk_can_keep_is_refused_before_its_body_is_sent(isolated_settings, disk):
    """The answer comes while the client has sent its headers only: nothing of the body was waited for or written."""
    declared = disk.free()  # all of it: the reserve would be gone
    with isolated_settings(min_free_bytes=disk.reserve) as settings:
        on_disk = settings.model_copy(update={"storage_dir": disk.path})
        with serving(create_app(on_disk), on_disk) as url:
            port = int(url.rsplit(":", 1)[1])
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(
                b"POST /v1/models HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: %d\r\n\r\n" % declared
            )
            answer = client.recv(1 << 16).decode()
            client.close()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 507 "), answer
    assert "application/problem+json" in head and "storage-full" in body and "bytes short" in body
    assert not list(disk.path.rglob("*.part"))


@contextmanager
def dev_full_staging(staging: Path) -> Iterator[Path]:
    """A staging 'file' that is a link to /dev/full: the kernel answers each write with ENOSPC, as a full disk."""
    staging.mkdir(parents=True, exist_ok=True)
    link = staging / f"{os.urandom(4).hex()}.part"
    link.symlink_to("/dev/full")
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)


def test_an_upload_that_runs_out_of_disk_while_written_is_a_507_and_leaves_nothing(
    isolated_settings, disk, demo, problem, monkeypatch
):
    """No reserve set: nothing refuses the upload up front, and the write itself meets the full disk."""
    with app_on(isolated_settings, disk) as (api, ctx):
        if disk.tmpfs:
            disk.fill(0)
        else:
            store = ctx.artifacts.store
            monkeypatch.setattr(store, "staging_file", lambda: dev_full_staging(disk.path / "staging"))
        with open(demo["train"], "rb") as fh:
            refused = api.http.post("/v1/datasets", files={"file": ("train.safetensors", fh)})
        body = problem(refused, 507, "storage-full")
        assert body["detail"] == "nothing was stored: the artifact store's disk is full (No space left on device)"
        assert api.http.get("/v1/datasets").json()["items"] == [] and assert_nothing_dangling(ctx) == set()
        if disk.tmpfs:
            ready = readiness(api)
            assert ready["storage"] == "full" and "disk is full" in ready["reason"], ready
        disk.relieve()
        monkeypatch.undo()
        assert readiness(api)["storage"] == "ok"
        stored = api.upload_dataset(demo["train"])
        assert assert_nothing_dangling(ctx) == {stored["sha256"]}


def failed_for_want_of_room(api: SuiteClient, job: dict) -> dict:
    ended = api.wait(job["id"])
    assert ended["status"] == "failed", ended
    error = ended["error"]
    assert error["code"] == "storage-full" and error["retryable"] is True, error
    assert ended["result"] is None
    assert api.http.get(f"/v1/jobs/{job['id']}/checkpoint").status_code == 409  # nothing half-written is served
    return error


def test_a_job_without_room_for_its_checkpoint_fails_storage_full_and_runs_once_space_is_freed(
    isolated_settings, start_worker, disk, demo
):
    with stack_on(isolated_settings, start_worker, disk, min_free_bytes=disk.reserve) as (api, ctx):
        inputs = api.upload_demo(demo["model"].parent)
        uploaded = assert_nothing_dangling(ctx)
        spec = {**json.loads(demo["job"].read_text()), **inputs}
        disk.short()
        error = failed_for_want_of_room(api, api.submit(spec))
        assert "the edited checkpoint needs" in error["detail"] and "bytes short" in error["detail"], error
        assert "submit the job again once space is freed" in error["detail"]
        assert assert_nothing_dangling(ctx) == uploaded  # the inputs, still held; no output
        disk.relieve()
        again = api.wait(api.submit(spec)["id"])
        assert again["status"] == "succeeded", again["error"]
        assert again["result"]["checkpoint"]["sha256"] in assert_nothing_dangling(ctx)


def test_a_checkpoint_write_that_meets_a_full_disk_fails_storage_full_and_leaves_nothing(
    isolated_settings, start_worker, disk, demo
):
    """No reserve set: the job starts writing, and safetensors' write meets the full disk."""
    if not disk.tmpfs:
        pytest.skip("needs a small file system: mounting a tmpfs needs root")
    with stack_on(isolated_settings, start_worker, disk) as (api, ctx):
        inputs = api.upload_demo(demo["model"].parent)
        uploaded = assert_nothing_dangling(ctx)
        disk.fill(0)
        error = failed_for_want_of_room(api, api.submit({**json.loads(demo["job"].read_text()), **inputs}))
        assert "writing the edited checkpoint" in error["detail"] and "bytes free" in error["detail"], error
        assert assert_nothing_dangling(ctx) == uploaded
