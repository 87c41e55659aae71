"""Two hosts, one service: an API and two workers that share nothing but Redis and an S3 bucket (moto's server;
each process its own local directory, as on separate hosts). Every route that touches artifacts and every job
kind runs end to end against S3, and any worker takes any job."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from service.core.storage import artifact_store
from service.core.storage.s3 import S3ArtifactStore
from service.web.app import create_app
from tests.support import SuiteClient
from tests.worker.test_worker_models import program_file  # noqa: F401 -- the fixture, shared


@pytest.fixture(scope="module")
def two_hosts(isolated_settings, s3_server, s3_bucket, start_worker, tmp_path_factory):
    windows = {"heartbeat_ttl_s": 2.0, "reaper_interval_s": 0.5, "progress_interval_s": 0.1, "worker_torch_threads": 1}
    storage = {"storage_url": f"s3://{s3_bucket()}/gif", "s3_endpoint_url": s3_server}
    with isolated_settings(**storage, **windows) as api_settings:
        hosts = [api_settings.model_copy(update={"storage_dir": tmp_path_factory.mktemp(f"host{i}")}) for i in (1, 2)]
        with start_worker(hosts[0]), start_worker(hosts[1]), TestClient(create_app(api_settings)) as http:
            yield SuiteClient(http=http), api_settings, hosts


def test_every_job_kind_runs_on_either_host_and_is_served_from_s3(two_hosts, demo):
    api, settings, hosts = two_hosts
    store = artifact_store(settings)
    assert isinstance(store, S3ArtifactStore)
    inputs = api.upload_demo(demo["model"].parent)
    train = load_file(demo["train"])
    indices = list(range(0, 200, 10))
    requests = [
        {"kind": "remove_class", "classes": [8]},
        {"kind": "remove_samples", "indices": indices},
        {"kind": "relabel", "indices": indices, "labels": [(int(train["y"][i]) + 1) % 10 for i in indices]},
    ] * 2
    jobs = [api.submit({**inputs, "request": request}) for request in requests]
    ended = [api.wait(job["id"]) for job in jobs]
    assert [job["status"] for job in ended] == ["succeeded"] * len(requests), [job["error"] for job in ended]
    context = api.http.app.state.context  # type: ignore[attr-defined]
    workers = {context.jobs.get(job["id"]).worker["name"] for job in ended}
    assert len(workers) == 2, workers  # both hosts took jobs
    for job in ended:
        checkpoint = job["result"]["checkpoint"]
        body = api.checkpoint(job["id"])
        assert hashlib.sha256(body).hexdigest() == checkpoint["sha256"] and checkpoint["sha256"] in store.names()
        assert "<svg" in api.http.get(f"/v1/jobs/{job['id']}/report").text
    again = api.wait(api.submit({**inputs, "model_id": ended[0]["result"]["model_id"], "request": requests[0]})["id"])
    assert again["status"] == "succeeded"  # an edit of an edit: the edited model's blob came from S3
    assert load_safetensors(api.checkpoint(again["id"])).keys() == load_file(demo["model"]).keys()


def test_deleting_the_last_reference_removes_the_object(two_hosts, demo, program_file):  # noqa: F811
    api, settings, _ = two_hosts
    store = artifact_store(settings)
    model = api.upload_model(program_file)
    train = api.upload_dataset(demo["train"])
    job = api.wait(
        api.submit(
            {
                "model_id": model["id"],
                "train_dataset_id": train["id"],
                "request": {"kind": "remove_class", "classes": [3]},
            }
        )["id"]
    )
    assert job["status"] == "succeeded", job["error"]
    program = api.http.get(f"/v1/jobs/{job['id']}/checkpoint", params={"format": "pt2"})
    assert hashlib.sha256(program.content).hexdigest() == job["result"]["program"]["sha256"]
    outputs = {job["result"]["checkpoint"]["sha256"], job["result"]["program"]["sha256"]}
    assert outputs <= store.names()
    assert api.http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    edited_model = job["result"]["model_id"]
    assert api.http.delete(f"/v1/models/{edited_model}").status_code == 204
    assert not outputs & store.names()
    for path in (f"/v1/models/{model['id']}", f"/v1/datasets/{train['id']}"):
        assert api.http.delete(path).status_code == 204
    assert model["sha256"] not in store.names()  # (the training data may back the other test's upload too)
    assert api.http.get("/readyz").status_code == 200
