"""Large data by reference: datasets registered by s3:// URL from the locations the operator allowed, and files sent
straight to the bucket by presigned multipart URLs, resumed after a dropped connection. Real S3 (the session's moto
server), reached through a relay that can cut one request off mid-body, as a dropped connection does."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import boto3
import gif_client.client
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from gif.cli import main
from service.core.storage import artifact_store
from service.tools.local_s3 import CREDENTIALS
from service.web.app import create_app
from tests.service.test_api_uploads import image_zip, png, shard
from tests.support import SuiteClient, stored_files

PART_BYTES = 5 * 1024**2  # S3's smallest part


class DroppingRelay(socketserver.ThreadingTCPServer):
    """A TCP relay to the S3 server. ``drop_next(marker)``: the first request whose bytes hold ``marker`` gets half of
    its first chunk through, then both sockets are closed under it (a dropped connection, as the client sees it)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.marker: bytes | None = None
        self.dropped = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RelayHandler)

    def drop_next(self, marker: bytes) -> None:
        with self.lock:
            self.marker = marker

    def take_drop(self, data: bytes) -> bool:
        with self.lock:
            if self.marker is None or self.marker not in data:
                return False
            self.marker, self.dropped = None, self.dropped + 1
            return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RelayHandler(socketserver.BaseRequestHandler):
    server: DroppingRelay

    def handle(self) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.server.upstream_port))
        answers = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
        answers.start()
        try:
            while data := self.request.recv(1 << 16):
                if self.server.take_drop(data):
                    upstream.sendall(data[: len(data) // 2])
                    return
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (upstream, self.request):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
    except OSError:
        pass


@pytest.fixture(scope="module")
def relay(s3_server) -> Iterator[DroppingRelay]:
    server = DroppingRelay(int(urlparse(s3_server).port or 80))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def data_bucket(s3_bucket) -> str:
    """A bucket of the operator's data, beside the store's: only its ``allowed/`` folder may be registered."""
    return s3_bucket()


@pytest.fixture(scope="module")
def s3(s3_server):
    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def on_s3(isolated_settings, s3_bucket, data_bucket, relay):
    """The API on an S3 store reached through the relay (so the part URLs it presigns go through it too); no worker."""
    storage = {"storage_url": f"s3://{s3_bucket()}/gif", "s3_endpoint_url": relay.url}
    with (
        isolated_settings(
            **storage,
            data_url_allowed=[f"s3://{data_bucket}/allowed", storage["storage_url"]],
            direct_upload_part_bytes=PART_BYTES,
        ) as settings,
        TestClient(create_app(settings)) as http,
    ):
        yield SuiteClient(http=http), settings


def tensors(samples: int, features: int = 4, seed: int = 0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, features, generator=generator)
    return safetensors_bytes({"x": x, "y": torch.arange(samples) % 3})


def incoming(s3, settings) -> list[str]:
    """The presigned uploads' objects and parts still in the store's bucket."""
    bucket = urlparse(settings.storage_url).netloc
    objects = s3.list_objects_v2(Bucket=bucket, Prefix="gif/incoming/").get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix="gif/incoming/").get("Uploads", [])
    return [o["Key"] for o in objects] + [u["Key"] for u in uploads]


def test_only_allowed_s3_locations_are_registered(on_s3, data_bucket, s3, problem):
    api, settings = on_s3
    s3.put_object(Bucket=data_bucket, Key="elsewhere/train.safetensors", Body=tensors(6))
    store_bucket = urlparse(settings.storage_url).netloc
    before = stored_files(settings)
    refused = {
        "https://example.com/train.safetensors": "only s3:// URLs",
        f"s3://other-{data_bucket}/allowed/train.safetensors": "outside the locations",
        f"s3://{data_bucket}/elsewhere/train.safetensors": "outside the locations",
        f"s3://{data_bucket}/allowedness/train.safetensors": "outside the locations",  # a prefix, not a folder
        f"s3://{data_bucket}/allowed/missing.safetensors": "no object",
        "s3://": "expected s3://bucket/key",
        f"s3://{store_bucket}/gif/blobs/{'0' * 64}": "own storage",  # even where the operator allowed the bucket
    }
    for url, words in refused.items():
        body = problem(api.http.post("/v1/datasets", json={"url": url}), 422, "validation-error")
        assert body["errors"][0]["pointer"] == "/url" and words in body["errors"][0]["detail"], (url, body)
    body = problem(api.http.post("/v1/datasets", json={"path": "x"}), 422, "validation-error")
    assert {e["pointer"] for e in body["errors"]} == {"/url", "/path"}
    assert stored_files(settings) == before and not list(api.list("datasets"))


def test_a_local_store_registers_nothing_by_url_and_offers_no_presigned_upload(
    isolated_settings, tmp_path, problem, monkeypatch
):
    local = isolated_settings(storage_url=f"file://{tmp_path}", data_url_allowed=["s3://data"])
    with local as settings, TestClient(create_app(settings)) as http:
        body = problem(http.post("/v1/datasets", json={"url": "s3://data/train.zip"}), 422, "validation-error")
        assert body["errors"][0]["pointer"] == "/url" and "not S3" in body["errors"][0]["detail"]
        problem(http.post("/v1/dataset-uploads", json={"size_bytes": 10}), 409, "conflict")
        monkeypatch.setattr(gif_client.client, "DIRECT_UPLOAD_THRESHOLD_BYTES", 1)  # every file would go direct
        record = SuiteClient(http=http).upload_dataset(_written(tmp_path / "t.safetensors", tensors(4)))
        assert record["num_samples"] == 4  # the client fell back to the multipart upload


def _written(path, content: bytes):
    path.write_bytes(content)
    return path


def test_an_allowed_object_and_a_prefix_of_shards_are_stored_as_uploads_are(on_s3, data_bucket, s3):
    api, settings = on_s3
    content = tensors(9)
    s3.put_object(Bucket=data_bucket, Key="allowed/train.safetensors", Body=content)
    record = api.register_dataset(f"s3://{data_bucket}/allowed/train.safetensors")
    assert record["sha256"] == hashlib.sha256(content).hexdigest() and record["num_samples"] == 9
    assert record["source_url"] == f"s3://{data_bucket}/allowed/train.safetensors"
    assert api.http.get(f"/v1/datasets/{record['id']}").json()["source_url"] == record["source_url"]
    assert record["sha256"] in artifact_store(settings).names()
    s3.put_object(Bucket=data_bucket, Key="allowed/shards/000.tar", Body=shard({"a": 0, "b": 1}, seed=1))
    s3.put_object(Bucket=data_bucket, Key="allowed/shards/001.tar", Body=shard({"c": 2, "d": 1, "e": 0}, seed=2))
    s3.put_object(Bucket=data_bucket, Key="allowed/shards/README", Body=b"not a shard: skipped")
    images = api.register_dataset(f"s3://{data_bucket}/allowed/shards/")
    assert images["source"] == "webdataset" and images["num_samples"] == 5 and images["sample_shape"] == [1, 5, 4]
    assert images["class_counts"] == [2, 2, 1] and images["source_url"].endswith("/allowed/shards/")


def test_a_hostile_object_is_refused_and_nothing_is_stored(on_s3, data_bucket, s3, problem):
    api, settings = on_s3
    before = stored_files(settings)
    climbing = image_zip({"../cat/1.png": png(np.zeros((2, 2), dtype=np.uint8))})
    s3.put_object(Bucket=data_bucket, Key="allowed/climbing.zip", Body=climbing)
    response = api.http.post("/v1/datasets", json={"url": f"s3://{data_bucket}/allowed/climbing.zip"})
    body = problem(response, 422, "invalid-dataset")
    assert body["errors"][0]["pointer"] == "/url" and "'..'" in body["errors"][0]["detail"]
    s3.put_object(Bucket=data_bucket, Key="allowed/shards-bad/000.tar", Body=b"\x00" * 700)
    problem(
        api.http.post("/v1/datasets", json={"url": f"s3://{data_bucket}/allowed/shards-bad/"}), 422, "invalid-dataset"
    )
    assert stored_files(settings) == before


def test_a_presigned_upload_resumes_after_a_dropped_part_and_is_checked_once_complete(on_s3, relay, s3, tmp_path):
    api, settings = on_s3
    path = _written(tmp_path / "big.safetensors", tensors(2 * PART_BYTES // 16 + 1000, features=4, seed=3))
    assert path.stat().st_size > 2 * PART_BYTES  # three parts
    relay.drop_next(b"partNumber=2")
    dropped_before = relay.dropped
    record = api.upload_dataset(path, direct=True)
    assert relay.dropped == dropped_before + 1  # part 2's first PUT was cut off mid-body, then sent again
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["filename"] == "big.safetensors" and record["num_samples"] == 2 * PART_BYTES // 16 + 1000
    assert record["sha256"] in artifact_store(settings).names() and not incoming(s3, settings)


def test_an_incomplete_or_invalid_presigned_upload_is_refused_and_deleted(on_s3, s3, tmp_path, problem):
    api, settings = on_s3
    before = stored_files(settings)
    started = api.http.post("/v1/dataset-uploads", json={"size_bytes": PART_BYTES + 10, "filename": "x.bin"})
    assert started.status_code == 201, started.text
    state = started.json()
    assert state["part_count"] == 2 and [p["number"] for p in state["parts"]] == [1, 2] and not state["parts_done"]
    assert api.bucket.put(state["parts"][0]["url"], content=b"\x07" * PART_BYTES).is_success
    resumed = api.http.get(f"/v1/dataset-uploads/{state['id']}").json()
    assert [p["number"] for p in resumed["parts_done"]] == [1] and [p["number"] for p in resumed["parts"]] == [2]
    body = problem(api.http.post(f"/v1/dataset-uploads/{state['id']}/complete"), 409, "conflict")
    assert "[2] missing" in body["detail"]
    assert api.bucket.put(resumed["parts"][0]["url"], content=b"\x07" * 10).is_success
    problem(api.http.post(f"/v1/dataset-uploads/{state['id']}/complete"), 422, "invalid-dataset")
    problem(api.http.get(f"/v1/dataset-uploads/{state['id']}"), 404, "not-found")
    assert not incoming(s3, settings) and stored_files(settings) == before


def test_a_job_takes_a_dataset_registered_by_url_as_it_takes_an_uploaded_one(on_s3, data_bucket, s3, demo):
    """Checked at submit against the registered record and queued with its blob (no worker here: it stays queued;
    the blob is read by workers as any upload's, see tests/worker/test_worker_s3.py)."""
    api, settings = on_s3
    s3.put_object(Bucket=data_bucket, Key="allowed/demo/train.safetensors", Body=demo["train"].read_bytes())
    registered = api.register_dataset(f"s3://{data_bucket}/allowed/demo/train.safetensors")
    architecture = json.loads(demo["architecture"].read_text())
    body = {
        **json.loads(demo["job"].read_text()),
        "model_id": api.upload_model(demo["model"], architecture)["id"],
        "train_dataset_id": registered["id"],
    }
    job = api.submit(body)
    assert job["status"] == "queued"
    context = api.http.app.state.context
    assert context.jobs.get(job["id"]).inputs["train"].sha256 == registered["sha256"]
    assert registered["sha256"] == hashlib.sha256(demo["train"].read_bytes()).hexdigest()


def test_gif_submit_registers_an_s3_train_data_url_instead_of_uploading(
    on_s3, data_bucket, s3, demo, monkeypatch, capsys
):
    api, _ = on_s3
    monkeypatch.setattr("gif_client.commands.remote_client", lambda args, host: SuiteClient(http=api.http))
    monkeypatch.setattr(SuiteClient, "close", lambda self: None)  # the module's test client stays open
    s3.put_object(Bucket=data_bucket, Key="allowed/cli/train.safetensors", Body=demo["train"].read_bytes())
    url = f"s3://{data_bucket}/allowed/cli/train.safetensors"
    argv = ["submit", "--server", "http://testserver", "--spec", str(demo["job"]), "--model", str(demo["model"]),
            "--architecture", str(demo["architecture"]), "--train-data", url]  # fmt: skip
    assert main(argv) == 0
    job = api.job(capsys.readouterr().out.strip())
    assert api.http.get(f"/v1/datasets/{job['spec']['train_dataset_id']}").json()["source_url"] == url


def test_a_presigned_upload_is_admitted_as_an_upload_of_its_size(
    on_s3, isolated_settings, s3_bucket, relay, s3, problem
):
    api, settings = on_s3
    too_large = {"size_bytes": settings.max_upload_bytes + 1}
    problem(api.http.post("/v1/dataset-uploads", json=too_large), 413, "payload-too-large")
    problem(api.http.post("/v1/dataset-uploads", json={"size_bytes": 0}), 422, "validation-error")
    storage = {"storage_url": f"s3://{s3_bucket()}/gif", "s3_endpoint_url": relay.url}
    with isolated_settings(**storage, quota_stored_bytes=10_000) as limited, TestClient(create_app(limited)) as http:
        problem(http.post("/v1/dataset-uploads", json={"size_bytes": 200_000}), 403, "storage-quota-exceeded")
        assert not incoming(s3, limited)  # refused before S3 heard of it
