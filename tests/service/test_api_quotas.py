"""Per-key quotas and the submit rate limit (GIF_QUOTA_*): each limit refuses with a problem naming the limit, its
value and the key's usage; keys do not share limits; two API processes share one key's limits through Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from service.web.app import create_app
from tests.support import SuiteClient

KEYS = ["alpha-key", "beta-key"]


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def app_client(settings, **limits) -> TestClient:
    return TestClient(create_app(settings.model_copy(update={"api_keys": KEYS, **limits})))


def upload_inputs(http: TestClient, demo) -> dict[str, str]:
    client = SuiteClient(http=http)
    model = client.upload_model(demo["model"], json.loads(demo["architecture"].read_text()))
    return {"model_id": model["id"], "train_dataset_id": client.upload_dataset(demo["train"])["id"]}


def job_body(inputs: dict[str, str], cls: int = 3) -> dict:
    return {**inputs, "request": {"kind": "remove_class", "classes": [cls]}}


@contextmanager
def two_api_processes(isolated_settings, **limits) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps on one Redis prefix with the same limits, as two API processes, both calling with alpha-key."""
    with (
        isolated_settings() as settings,
        app_client(settings, **limits) as first,
        app_client(settings, **limits) as second,
    ):
        for http in (first, second):
            http.headers.update(as_key("alpha-key"))
        yield first, second


@pytest.fixture
def limited(isolated_settings):
    """``limited(**limits)``: a TestClient on a fresh prefix with those GIF_QUOTA_* limits and two keys."""
    opened = []

    def make(**limits) -> TestClient:
        context = isolated_settings()
        settings = context.__enter__()
        http = app_client(settings, **limits).__enter__()
        opened.append((context, http))
        return http

    yield make
    for context, http in reversed(opened):
        http.__exit__(None, None, None)
        context.__exit__(None, None, None)


def test_limits_are_off_by_default_and_usage_counts_anyway(limited, demo):
    http = limited()
    http.headers.update(as_key("alpha-key"))
    inputs = upload_inputs(http, demo)
    for _ in range(3):
        assert http.post("/v1/jobs", json=job_body(inputs)).status_code == 202
    usage = http.get("/v1/usage").json()
    stored = demo["model"].stat().st_size + demo["train"].stat().st_size
    assert usage["active_jobs"] == {"usage": 3, "limit": None}
    assert usage["stored_bytes"] == {"usage": stored, "limit": None}
    assert usage["submits_per_minute"] == {"limit": None, "available": None}
    assert usage["jobs"]["queued"] == 3 and usage["models"] == 1 and usage["datasets"] == 1


def test_active_jobs_are_limited_per_key_until_one_ends(limited, demo, problem):
    http = limited(quota_active_jobs=2)
    http.headers.update(as_key("alpha-key"))
    inputs = upload_inputs(http, demo)
    jobs = [http.post("/v1/jobs", json=job_body(inputs)).json()["id"] for _ in range(2)]
    refused = http.post("/v1/jobs", json=job_body(inputs))
    body = problem(refused, 409, "active-jobs-limit")
    assert body["quota"] == {"name": "active_jobs", "limit": 2, "usage": 2}
    assert "GIF_QUOTA_ACTIVE_JOBS" in body["detail"] and int(refused.headers["retry-after"]) > 0
    assert http.get("/v1/usage").json()["active_jobs"] == {"usage": 2, "limit": 2}
    assert len(http.get("/v1/jobs").json()["items"]) == 2, "the refused job is recorded nowhere"

    http.headers.update(as_key("beta-key"))
    beta_inputs = upload_inputs(http, demo)
    assert http.post("/v1/jobs", json=job_body(beta_inputs)).status_code == 202, "another key has its own limit"

    http.headers.update(as_key("alpha-key"))
    assert http.post(f"/v1/jobs/{jobs[0]}/cancel").status_code == 200
    assert http.post("/v1/jobs", json=job_body(inputs)).status_code == 202, "an ended job frees its slot"


def test_two_api_processes_admit_a_keys_last_slot_once(isolated_settings, demo, problem):
    """The check and the write are one Redis step: two apps (two API processes) on one Redis, each sure it sees a
    free slot, cannot both take it."""
    with two_api_processes(isolated_settings, quota_active_jobs=1) as (first, second):
        inputs = upload_inputs(first, demo)
        assert first.post("/v1/jobs", json=job_body(inputs)).status_code == 202
        problem(second.post("/v1/jobs", json=job_body(inputs)), 409, "active-jobs-limit")


def test_stored_bytes_refused_up_front_and_freed_by_delete(limited, demo, problem):
    model_bytes, train_bytes = demo["model"].stat().st_size, demo["train"].stat().st_size
    http = limited(quota_stored_bytes=model_bytes + train_bytes)
    http.headers.update(as_key("alpha-key"))
    inputs = upload_inputs(http, demo)
    assert http.get("/v1/usage").json()["stored_bytes"] == {
        "usage": model_bytes + train_bytes,
        "limit": model_bytes + train_bytes,
    }
    with open(demo["eval"], "rb") as fh:
        refused = http.post("/v1/datasets", files={"file": ("eval.safetensors", fh)})
    body = problem(refused, 403, "storage-quota-exceeded")
    assert body["quota"] == {
        "name": "stored_bytes",
        "limit": model_bytes + train_bytes,
        "usage": model_bytes + train_bytes,
    }
    assert "retry-after" not in refused.headers, "waiting does not make room; deleting does"
    assert http.get("/v1/usage").json()["datasets"] == 1

    assert http.delete(f"/v1/datasets/{inputs['train_dataset_id']}").status_code == 204
    assert http.get("/v1/usage").json()["stored_bytes"]["usage"] == model_bytes
    assert http.delete(f"/v1/datasets/{inputs['train_dataset_id']}").status_code == 404
    assert http.get("/v1/usage").json()["stored_bytes"]["usage"] == model_bytes, "a second delete gives back nothing"
    with open(demo["eval"], "rb") as fh:
        assert http.post("/v1/datasets", files={"file": ("eval.safetensors", fh)}).status_code == 201


def test_an_upload_that_passes_the_quota_once_read_is_refused_and_counts_nothing(limited, demo, problem):
    """A body sent without a Content-Length (chunked) cannot be refused before it is read: the reservation after
    validation refuses it, and nothing of it stays stored or counted."""
    train_bytes = demo["train"].stat().st_size
    http = limited(quota_stored_bytes=train_bytes - 1)
    http.headers.update(as_key("alpha-key"))
    boundary = "quota-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="train.safetensors"\r\n\r\n'
    ).encode()
    body = head + demo["train"].read_bytes() + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        yield from (body[i : i + 65536] for i in range(0, len(body), 65536))

    refused = http.post(
        "/v1/datasets", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    problem(refused, 403, "storage-quota-exceeded")
    assert http.get("/v1/usage").json()["stored_bytes"]["usage"] == 0
    assert http.get("/v1/datasets").json()["items"] == []


def test_submits_per_minute_is_a_token_bucket_shared_by_api_processes(isolated_settings, demo, problem):
    with two_api_processes(isolated_settings, quota_submits_per_minute=60) as (first, second):
        inputs = upload_inputs(first, demo)
        admitted = 0
        for i in range(70):  # 60 at once, then about one a second
            response = (first, second)[i % 2].post("/v1/jobs", json=job_body(inputs))
            if response.status_code == 202:
                admitted += 1
                continue
            body = problem(response, 429, "rate-limited")
            assert body["quota"]["name"] == "submits_per_minute" and body["quota"]["limit"] == 60
            assert 1 <= int(response.headers["retry-after"]) <= 2
            break
        assert 60 <= admitted <= 62, admitted  # the bucket refills one per second while the loop runs
        assert first.get("/v1/usage").json()["submits_per_minute"]["available"] < 1
        second.headers.update(as_key("beta-key"))
        beta_inputs = upload_inputs(second, demo)
        assert second.post("/v1/jobs", json=job_body(beta_inputs)).status_code == 202, "each key has its own bucket"
        time.sleep(1.1)
        assert first.post("/v1/jobs", json=job_body(inputs)).status_code == 202, "the bucket refills"


def test_an_idempotent_replay_spends_no_submit(limited, demo):
    http = limited(quota_submits_per_minute=1)
    http.headers.update(as_key("alpha-key"))
    inputs = upload_inputs(http, demo)
    headers = {"Idempotency-Key": "replayed"}
    assert http.post("/v1/jobs", json=job_body(inputs), headers=headers).status_code == 202
    assert http.post("/v1/jobs", json=job_body(inputs), headers=headers).status_code == 200
    assert http.post("/v1/jobs", json=job_body(inputs)).status_code == 429


def test_a_declared_body_past_the_quota_is_refused_before_it_is_read(limited, demo, problem):
    http = limited(quota_stored_bytes=10 * 1024**2)
    http.headers.update(as_key("alpha-key"))
    sent = []

    def body():
        for _ in range(64):  # 64 MiB declared, refused after the first read at most
            sent.append(1)
            yield b"\0" * 1024**2

    refused = http.post(
        "/v1/datasets",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(64 * 1024**2)},
    )
    problem(refused, 403, "storage-quota-exceeded")
    assert len(sent) <= 1, f"{len(sent)} MiB were read before the refusal"


def test_the_client_and_cli_show_usage_and_the_limit_reached(limited, demo, monkeypatch, capsys):
    from gif_client import Client, RateLimitedError

    from gif.cli import main

    http = limited(quota_submits_per_minute=1, quota_active_jobs=5)
    http.headers.update(as_key("alpha-key"))
    client = SuiteClient(http=http)
    inputs = upload_inputs(http, demo)
    client.submit(job_body(inputs))
    with pytest.raises(RateLimitedError) as refused:
        client.submit(job_body(inputs))
    assert refused.value.quota == {"name": "submits_per_minute", "limit": 1, "usage": pytest.approx(1, abs=0.1)}
    assert refused.value.retry_after_s is not None and 1 <= refused.value.retry_after_s <= 60
    assert client.usage()["active_jobs"] == {"usage": 1, "limit": 5}

    monkeypatch.setattr("gif_client.commands.remote_client", lambda args, host: Client(http=http))
    monkeypatch.setattr(Client, "close", lambda self: None)
    assert main(["usage", "--server", "x"]) == 0
    printed = capsys.readouterr().out
    assert "active_jobs: 1 of 5" in printed and "stored_bytes: " in printed and "of 1 left" in printed


def test_requests_per_second_hold_a_greedy_poller_to_its_rate(limited, problem):
    """20 a second, a quarter second's worth (5) at once; a refused request is answered after its Retry-After."""
    http = limited(quota_requests_per_second=20)
    http.headers.update(as_key("alpha-key"))
    statuses = [http.get("/v1/jobs").status_code for _ in range(5)]
    started = time.monotonic()
    refused = http.get("/v1/jobs")
    waited = time.monotonic() - started
    assert statuses == [200] * 5, statuses
    body = problem(refused, 429, "rate-limited")
    assert body["quota"]["name"] == "requests_per_second" and body["quota"]["limit"] == 20
    assert refused.headers["retry-after"] == "1" and waited >= 1.0, "the 429 comes after the wait it asks for"
    assert http.get("/healthz").status_code == 200, "probes carry no key and are not limited"
    assert http.get("/v1/jobs", headers=as_key("beta-key")).status_code == 200, "each key has its own bucket"
    assert http.get("/v1/jobs").status_code == 200, "refilled meanwhile"
