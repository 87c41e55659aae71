"""POST /v1/jobs and the job resource without a worker: every job that cannot run is refused at POST time."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from service.core.context import ServiceContext
from service.core.queue import job_queue, withdraw_job
from service.core.records import Keys
from tests.service.results import edit_result


@pytest.fixture()
def base(inputs):
    return {
        "model_id": inputs["model_id"],
        "train_dataset_id": inputs["train_dataset_id"],
        "request": {"kind": "remove_class", "classes": [8]},
    }


@pytest.fixture(scope="module")
def dataset_id(http):
    """Upload tensors as a dataset; returns its id."""

    def upload(x: torch.Tensor, y: torch.Tensor) -> str:
        response = http.post("/v1/datasets", files={"file": ("d.safetensors", safetensors_bytes({"x": x, "y": y}))})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    return upload


def test_a_valid_job_is_queued_with_its_full_spec(http, base, inputs, settings):
    response = http.post("/v1/jobs", json={**base, "eval_dataset_id": inputs["eval_dataset_id"]})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] is None and job["result"] is None and job["error"] is None
    assert job["spec"]["solver"]["kind"] == "lsmr" and job["spec"]["eval_dataset_id"] == inputs["eval_dataset_id"]
    assert set(job) >= {
        "id",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "spec",
        "progress",
        "result",
        "error",
    }
    assert http.get(f"/v1/jobs/{job['id']}").json() == job
    queued = job_queue(settings).fetch_job(job["id"])
    assert list(queued.args) == [job["id"]] and not queued.kwargs  # a worker gets the job id, nothing else


def test_unknown_ids_are_all_named(http, base, problem):
    body = problem(
        http.post("/v1/jobs", json={**base, "model_id": "model_nope", "eval_dataset_id": "dataset_nope"}),
        422,
        "unknown-reference",
    )
    assert sorted(e["pointer"] for e in body["errors"]) == ["/eval_dataset_id", "/model_id"]


@pytest.mark.parametrize(
    "request_, words",
    [
        ({"kind": "remove_class", "classes": [12]}, "class 12 is out of range"),
        ({"kind": "remove_samples", "indices": [5, 100000]}, "indices out of range"),
        ({"kind": "relabel", "indices": [1, 2], "labels": [3, 10]}, "labels out of range"),
        ({"kind": "remove_class", "classes": list(range(10))}, "every training example"),
    ],
    ids=["class", "index", "label", "everything"],
)
def test_requests_that_do_not_fit_the_data_are_refused(http, base, problem, request_, words):
    body = problem(http.post("/v1/jobs", json={**base, "request": request_}), 422, "invalid-spec")
    assert body["errors"][0]["pointer"] == "/request"
    assert words in body["errors"][0]["detail"]


@pytest.mark.parametrize(
    "request_, pointer",
    [
        ({"kind": "remove_class", "classes": []}, "/request/classes"),
        ({"kind": "remove_samples", "indices": []}, "/request/indices"),
        ({"kind": "relabel", "indices": [1, 2, 3], "labels": [0]}, "/request"),
        ({"kind": "remove_samples", "indices": [-1]}, "/request/indices/0"),
        ({"kind": "forget_everything"}, "/request"),
    ],
    ids=["no-classes", "no-indices", "unequal-relabel", "negative-index", "unknown-kind"],
)
def test_malformed_requests_name_the_field(http, base, problem, request_, pointer):
    body = problem(http.post("/v1/jobs", json={**base, "request": request_}), 422, "validation-error")
    assert pointer in [e["pointer"] for e in body["errors"]], body


def test_missing_and_unknown_fields_are_listed(http, base, problem):
    body = problem(
        http.post("/v1/jobs", json={"request": base["request"], "solver": {"kind": "cg", "tolerance": 2}}),
        422,
        "validation-error",
    )
    assert {"/model_id", "/train_dataset_id", "/solver/tolerance"} <= {e["pointer"] for e in body["errors"]}
    body = problem(http.post("/v1/jobs", json={**base, "methd": "gif"}), 422, "validation-error")
    assert [e["pointer"] for e in body["errors"]] == ["/methd"]


def test_labels_the_model_does_not_have_are_refused(http, base, dataset_id, problem):
    train = dataset_id(torch.rand(20, 1, 8, 8), torch.arange(20) % 12)  # labels 10 and 11 on a 10-class model
    body = problem(http.post("/v1/jobs", json={**base, "train_dataset_id": train}), 422, "invalid-spec")
    assert any("label 11" in e["detail"] for e in body["errors"])


def test_data_of_the_wrong_shape_is_refused(http, base, dataset_id, problem):
    wrong = dataset_id(torch.rand(20, 3, 5), torch.arange(20) % 10)
    body = problem(http.post("/v1/jobs", json={**base, "train_dataset_id": wrong}), 422, "invalid-spec")
    assert [e["pointer"] for e in body["errors"]] == ["/train_dataset_id"]
    body = problem(
        http.post(
            "/v1/jobs",
            json={**base, "eval_dataset_id": wrong, "validation_dataset_id": wrong, "attack_dataset_id": wrong},
        ),
        422,
        "invalid-spec",
    )
    assert {e["pointer"] for e in body["errors"]} == {
        "/eval_dataset_id",
        "/validation_dataset_id",
        "/attack_dataset_id",
    }
    assert any("relabel requests only" in e["detail"] for e in body["errors"])


def test_unreadable_bodies_are_4xx(http, problem):
    problem(
        http.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 400, "bad-request"
    )
    problem(
        http.post("/v1/jobs", content=b"model_id=x", headers={"content-type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    problem(http.post("/v1/jobs", json=[1, 2]), 422, "validation-error")


def test_cancel_a_queued_job(http, base, settings, problem):
    job = http.post("/v1/jobs", json=base).json()
    response = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] and cancelled["error"]["code"] == "cancelled"
    assert job["id"] not in job_queue(settings).job_ids
    problem(http.post(f"/v1/jobs/{job['id']}/cancel"), 409, "conflict")
    problem(http.get(f"/v1/jobs/{job['id']}/checkpoint"), 409, "conflict")
    assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    problem(http.get(f"/v1/jobs/{job['id']}"), 404, "not-found")


def test_a_queued_job_the_queue_lost_is_enqueued_again(http, base, settings):
    job = http.post("/v1/jobs", json=base).json()
    queue = job_queue(settings)
    withdraw_job(queue, job["id"])
    queue.connection.hset(Keys(settings.key_prefix).job(job["id"]), "created_at", "2026-01-01T00:00:00.000Z")
    deadline = time.monotonic() + 10
    while job["id"] not in queue.job_ids and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job["id"] in queue.job_ids
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_a_queued_job_taken_by_a_worker_that_died_is_enqueued_again(http, base, settings):
    """RQ parks a job a worker has taken in an intermediate list; if the worker is killed before starting it, it
    stays there (RQ itself cleans that list up every 10 minutes or so)."""
    job = http.post("/v1/jobs", json=base).json()
    queue = job_queue(settings)
    queue.connection.lmove(queue.key, queue.intermediate_queue_key, "RIGHT", "LEFT")  # what a worker's BLMOVE does
    assert job["id"] not in queue.job_ids
    queue.connection.hset(Keys(settings.key_prefix).job(job["id"]), "created_at", "2026-01-01T00:00:00.000Z")
    deadline = time.monotonic() + 10
    while job["id"] not in queue.job_ids and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job["id"] in queue.job_ids
    assert job["id"].encode() not in queue.connection.lrange(queue.intermediate_queue_key, 0, -1)


def test_unfinished_jobs_have_no_checkpoint_and_cannot_be_deleted(http, base, problem):
    job = http.post("/v1/jobs", json=base).json()
    problem(http.get(f"/v1/jobs/{job['id']}/checkpoint"), 409, "conflict")
    problem(http.delete(f"/v1/jobs/{job['id']}"), 409, "conflict")
    for job_id in ("job_00000000000000000000", "job_0000", f"{job['id']}:heartbeat", f"x:{job['id']}"):
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/checkpoint"):
            problem(http.get(path), 404, "not-found")
        problem(http.post(f"/v1/jobs/{job_id}/cancel"), 404, "not-found")


def test_a_stored_result_is_served_as_written_and_one_of_an_older_version_still_reads(http, base, settings, problem):
    """The worker stores its ``EditResult`` as the JSON of ``model_dump`` (every version's layout) and the API reads it
    back as an ``EditResult``: served as written; one from before ``data``, ``device`` and ``class_accuracy`` existed
    reads with them null, and its checkpoint and report are served."""
    ctx = ServiceContext.create(settings)
    job = http.post("/v1/jobs", json=base).json()
    assert ctx.jobs.start(job["id"], {"name": "test"})
    sha = "0" * 64
    result = edit_result(checkpoint={"sha256": sha, "size_bytes": 3}, model_id="model_00000000000000000000")
    assert ctx.jobs.succeed(job["id"], result)
    written = result.model_dump(mode="json")
    assert http.get(f"/v1/jobs/{job['id']}").json()["result"] == written
    newer = ("data", "device", "class_accuracy")
    older = {name: value for name, value in written.items() if name not in newer}
    ctx.jobs.client.hset(Keys(settings.key_prefix).job(job["id"]), "result", json.dumps(older))
    assert http.get(f"/v1/jobs/{job['id']}").json()["result"] == {**older, **dict.fromkeys(newer)}
    assert http.get(f"/v1/jobs/{job['id']}/checkpoint", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    problem(http.get(f"/v1/jobs/{job['id']}/checkpoint", params={"format": "pt2"}), 409, "conflict")
    assert http.get(f"/v1/jobs/{job['id']}/report").status_code == 200


def test_lists_are_paginated_newest_first_and_filtered_by_status(http, base):
    ids = [http.post("/v1/jobs", json=base).json()["id"] for _ in range(5)]
    http.post(f"/v1/jobs/{ids[1]}/cancel")
    seen, cursor = [], None
    while True:
        page = http.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:5] == ids[::-1] and len(seen) == len(set(seen))
    cancelled = [
        job["id"] for job in http.get("/v1/jobs", params={"status": "cancelled", "limit": 200}).json()["items"]
    ]
    assert ids[1] in cancelled and not (set(ids) - {ids[1]}) & set(cancelled)
    queued = http.get("/v1/jobs", params={"status": "queued", "limit": 200}).json()["items"]
    assert {job["status"] for job in queued} == {"queued"}


@pytest.mark.parametrize("params", [{"status": "done"}, {"limit": 0}, {"limit": 1000}, {"cursor": "abc"}])
def test_bad_list_parameters_are_refused(http, problem, params):
    body = problem(http.get("/v1/jobs", params=params), 422, "validation-error")
    assert body["errors"][0]["parameter"] == next(iter(params))


def test_an_idempotency_key_makes_retries_return_the_same_job(http, base, problem):
    import secrets
    from concurrent.futures import ThreadPoolExecutor

    key = {"Idempotency-Key": secrets.token_hex(8)}
    first = http.post("/v1/jobs", json=base, headers=key)
    again = http.post("/v1/jobs", json=base, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    other = {**base, "request": {"kind": "remove_class", "classes": [3]}}
    body = problem(http.post("/v1/jobs", json=other, headers=key), 422, "idempotency-key-reused")
    assert body["errors"][0]["parameter"] == "Idempotency-Key"
    assert http.post("/v1/jobs", json=other).status_code == 202  # without a key: a new job

    fresh = {"Idempotency-Key": secrets.token_hex(8)}  # a refused request does not use its key up
    problem(
        http.post("/v1/jobs", json={**base, "model_id": "model_" + "0" * 20}, headers=fresh), 422, "unknown-reference"
    )
    assert http.post("/v1/jobs", json=base, headers=fresh).status_code == 202

    racing = {"Idempotency-Key": secrets.token_hex(8)}  # concurrent retries make one job
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: http.post("/v1/jobs", json=base, headers=racing), range(4)))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 202]
    assert len({r.json()["id"] for r in responses}) == 1
