"""Retention (GIF_RETENTION_*): finished jobs and unused uploads expire in bounded batches; nothing a queued or running
job uses, and no model registered from a job, ever does; DELETE /v1/jobs/{id} removes what only the job holds.

Jobs are moved through their states by the worker's own ``JobStore`` calls and their checkpoints stored through
``Artifacts``, as the worker does, so that no worker process has to run here."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.core import retention
from service.core.context import ServiceContext
from service.web.app import create_app
from tests.service.results import edit_result
from tests.support import SuiteClient, stored_files

HOUR = 3600.0


@pytest.fixture
def stack(isolated_settings):
    """(settings, ctx, client) on a fresh prefix: jobs expire an hour after they finish, uploads a day unused,
    at most two of each per pass."""
    limits = {"retention_jobs_s": HOUR, "retention_uploads_s": 24 * HOUR, "retention_batch": 2}
    with isolated_settings(**limits) as settings, TestClient(create_app(settings)) as http:
        yield settings, ServiceContext.create(settings), SuiteClient(http=http)


def uploads(client: SuiteClient, demo) -> dict[str, str]:
    model = client.upload_model(demo["model"], json.loads(demo["architecture"].read_text()))
    return {"model_id": model["id"], "train_dataset_id": client.upload_dataset(demo["train"])["id"]}


def submit(client: SuiteClient, inputs: dict[str, str]) -> str:
    return client.submit({**inputs, "request": {"kind": "remove_class", "classes": [3]}})["id"]


def finish(ctx: ServiceContext, job_id: str, register: bool = False) -> str:
    """Run the job's worker side: running, a checkpoint stored under the job, succeeded (and, with ``register``, the
    checkpoint registered as an edited model, as every succeeded job does); the checkpoint's sha256."""
    assert ctx.jobs.start(job_id, {"name": "test"})
    content = job_id.encode()  # distinct bytes per job: a blob of its own
    sha = hashlib.sha256(content).hexdigest()
    with ctx.artifacts.store.staging_file() as staged:
        staged.write_bytes(content)
        ctx.artifacts.add(staged, sha, f"job:{job_id}")
    result: dict[str, Any] = {"checkpoint": {"sha256": sha, "size_bytes": len(content)}}
    if register:
        job = ctx.jobs.get(job_id)
        assert job is not None
        facts = {"sha256": sha, "size_bytes": len(job_id), "format": "safetensors", "architecture": {"name": "mlp"}}
        facts |= {"num_parameters": 1, "num_classes": 10, "parent_model_id": job.inputs["model"].id, "job_id": job_id}
        model = ctx.catalog.register("model", job.owner, facts)
        assert model is not None
        result["model_id"] = model.id
    assert ctx.jobs.succeed(job_id, edit_result(**result))
    return sha


def test_finished_jobs_expire_with_their_checkpoints_oldest_first_in_batches(stack, demo):
    settings, ctx, client = stack
    inputs = uploads(client, demo)
    jobs = [submit(client, inputs) for _ in range(3)]
    shas = [finish(ctx, job_id) for job_id in jobs]
    assert set(shas) <= stored_files(settings)

    assert retention.expire(ctx, time.time() + HOUR - 60).jobs == 0, "not an hour old yet"
    assert retention.expire(ctx, time.time() + HOUR + 1).jobs == 2, "at most GIF_RETENTION_BATCH per pass"
    assert [client.http.get(f"/v1/jobs/{j}").status_code for j in jobs] == [404, 404, 200], "oldest first"
    assert retention.expire(ctx, time.time() + HOUR + 1).jobs == 1
    assert not set(shas) & stored_files(settings), "the checkpoints only the jobs held went with them"
    for upload in (f"/v1/models/{inputs['model_id']}", f"/v1/datasets/{inputs['train_dataset_id']}"):
        assert client.http.get(upload).status_code == 200, "the uploads the jobs used are the user's own"


def test_a_model_registered_from_a_job_outlives_the_job(stack, demo):
    settings, ctx, client = stack
    inputs = uploads(client, demo)
    job_id = submit(client, inputs)
    sha = finish(ctx, job_id, register=True)
    edited = ctx.jobs.get(job_id).result.model_id  # type: ignore[union-attr]

    assert retention.expire(ctx, time.time() + 1000 * HOUR) == retention.Expired(jobs=1, uploads=2)
    assert client.http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.http.get(f"/v1/models/{edited}").status_code == 200, "never expired as an unused upload"
    assert sha in stored_files(settings), "the edited model still holds its file"
    assert client.http.delete(f"/v1/models/{edited}").status_code == 204
    assert sha not in stored_files(settings)


def test_an_input_of_a_queued_or_running_job_never_expires(stack, demo):
    settings, ctx, client = stack
    inputs = uploads(client, demo)
    queued, running = submit(client, inputs), submit(client, inputs)
    assert ctx.jobs.start(running, {"name": "test"})
    blobs = stored_files(settings)
    much_later = time.time() + 1000 * HOUR

    assert retention.expire(ctx, much_later) == retention.Expired(jobs=0, uploads=0)
    for path in (f"/v1/models/{inputs['model_id']}", f"/v1/datasets/{inputs['train_dataset_id']}"):
        assert client.http.get(path).status_code == 200
    assert stored_files(settings) == blobs
    assert {client.job(queued)["status"], client.job(running)["status"]} == {"queued", "running"}

    # Once both have ended, the uploads are looked at again a full age after the pass that found them in use.
    client.cancel(queued)
    assert ctx.jobs.succeed(running, edit_result())
    assert retention.expire(ctx, much_later + 24 * HOUR - 60) == retention.Expired(jobs=2, uploads=0)
    assert retention.expire(ctx, much_later + 24 * HOUR + 1) == retention.Expired(jobs=0, uploads=2)
    assert client.usage()["stored_bytes"]["usage"] == 0, "expired uploads give their bytes back"
    assert not stored_files(settings) - {"staging"}, "nothing stored is left"


def test_a_submit_counts_as_a_use_of_its_uploads(stack, demo):
    _, ctx, client = stack
    inputs = uploads(client, demo)
    unused = client.upload_dataset(demo["eval"])["id"]
    now = time.time()
    for member in (f"model:{inputs['model_id']}", f"dataset:{inputs['train_dataset_id']}", f"dataset:{unused}"):
        ctx.client.zadd(ctx.catalog.keys.uploads_used, {member: now - 23 * HOUR}, xx=True)  # uploaded 23 h ago
    client.cancel(submit(client, inputs))  # used now; the job ended at once

    assert retention.expire(ctx, now + HOUR + 1).uploads == 1
    assert client.http.get(f"/v1/datasets/{unused}").status_code == 404, "unused for a day: expired"
    for path in (f"/v1/models/{inputs['model_id']}", f"/v1/datasets/{inputs['train_dataset_id']}"):
        assert client.http.get(path).status_code == 200, "used an hour ago"


def test_delete_job_removes_what_only_it_holds(stack, demo, problem):
    settings, ctx, client = stack
    inputs = uploads(client, demo)
    plain, registered, queued = submit(client, inputs), submit(client, inputs), submit(client, inputs)
    plain_sha = finish(ctx, plain)
    registered_sha = finish(ctx, registered, register=True)

    problem(client.http.delete(f"/v1/jobs/{queued}"), 409, "conflict")
    for job_id in (plain, registered):
        assert client.http.delete(f"/v1/jobs/{job_id}").status_code == 204
        problem(client.http.delete(f"/v1/jobs/{job_id}"), 404, "not-found")
    stored = stored_files(settings)
    assert plain_sha not in stored and registered_sha in stored, "the registered model keeps its file"
    assert retention.expire(ctx, time.time() + 2 * HOUR).jobs == 0, "deleted jobs leave the retention index"


def test_the_apis_reaper_applies_retention(isolated_settings, demo):
    with (
        isolated_settings(reaper_interval_s=0.2, retention_jobs_s=0.5) as settings,
        TestClient(create_app(settings)) as http,
    ):
        client, ctx = SuiteClient(http=http), ServiceContext.create(settings)
        job_id = submit(client, uploads(client, demo))
        finish(ctx, job_id)
        deadline = time.monotonic() + 10
        while http.get(f"/v1/jobs/{job_id}").status_code == 200:
            assert time.monotonic() < deadline, "the finished job was not expired by the reaper"
            time.sleep(0.1)
