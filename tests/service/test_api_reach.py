"""Every response the committed schema documents is one the service really gives: each (operation, status) pair of
``openapi/openapi.json`` is reached here by a request made to produce it, and each response is validated against the
schema (status documented, content type, body). The fuzzer (``test_api_fuzz.py``) reaches what random requests can;
the rest needs state: stored uploads, a job that succeeded on the suite's worker, a running job, a key at its
limits, an S3 store that redirects, a store that cannot be written. A status documented but not reached here fails the
last test: reach it, or remove it from the schema.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.core.transport import Response

from service.core.context import ServiceContext
from service.tools.launch import free_port
from service.web.app import create_app
from service.web.auth import owner_of
from tests.service.conftest import serving
from tests.service.results import edit_result
from tests.support import SuiteClient

SCHEMA = schemathesis.openapi.from_path(Path(__file__).resolve().parents[2] / "openapi" / "openapi.json")
DOCUMENTED = {
    (method.upper(), path, int(code))
    for path, item in SCHEMA.raw_schema["paths"].items()
    for method, operation in item.items()
    for code in operation["responses"]
    if code.isdigit()
}
KEY = "reach-key"
UNKNOWN = {
    "{name}": "no-such-architecture",
    "{model_id}": "model_" + "0" * 20,
    "{dataset_id}": "dataset_" + "0" * 20,
    "{job_id}": "job_" + "0" * 20,
    "{upload_id}": "upload_" + "0" * 20,
}
reached: set[tuple[str, str, int]] = set()


def reach(http: httpx.Client, method: str, template: str, status: int, path: str | None = None, **kw: Any) -> Any:
    """Send the request, expect ``status``, validate the response against the schema's operation; the response."""
    response = http.request(method, path or template, follow_redirects=False, **kw)
    assert response.status_code == status, f"{method} {path or template}: {response.status_code} {response.text[:500]}"
    assert (method, template, status) in DOCUMENTED, f"{method} {template} answered an undocumented {status}"
    # validated as answered to a request without its body: a streamed body (a generator, a multipart file) cannot be
    # read again, and the schema says nothing of what a response depends on in it
    request = requests.Request(method, str(response.request.url), headers=dict(response.request.headers)).prepare()
    headers = {name: [value] for name, value in response.headers.items()}
    checked = Response(response.status_code, headers, response.content, request, elapsed=0.0, verify=False)
    SCHEMA[template][method].validate_response(checked)
    reached.add((method, template, status))
    return response


def demo_upload(http: TestClient, demo, kind: str, status: int = 201) -> httpx.Response:
    data = {"architecture": demo["architecture"].read_text()} if kind == "model" else {}
    with open(demo["model" if kind == "model" else "train"], "rb") as fh:
        return reach(http, "POST", f"/v1/{kind}s", status, files={"file": ("f.safetensors", fh)}, data=data)


def job_body(model_id: str, dataset_id: str) -> dict[str, Any]:
    return {"model_id": model_id, "train_dataset_id": dataset_id, "request": {"kind": "remove_class", "classes": [3]}}


@pytest.fixture(scope="module")
def keyed(stack_settings, worker) -> Iterator[TestClient]:
    """The app on the suite worker's queue, with an API key: its jobs run."""
    with TestClient(create_app(stack_settings.model_copy(update={"api_keys": [KEY]}))) as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        yield http


def with_unknown_ids(template: str) -> str:
    for placeholder, value in UNKNOWN.items():
        template = template.replace(placeholder, value)
    return template


def test_every_operation_refuses_a_missing_key_an_unknown_id_and_an_unknown_parameter(keyed):
    for method, template, status in sorted(DOCUMENTED):
        path = with_unknown_ids(template)
        if status == 401:
            reach(keyed, method, template, 401, path, headers={"Authorization": ""})
        elif status == 404:
            reach(keyed, method, template, 404, path)
        elif status == 422 and "requestBody" not in SCHEMA.raw_schema["paths"][template][method.lower()]:
            reach(keyed, method, template, 422, path, params={"unexpected": "1"})


def test_uploads_jobs_and_their_files(keyed, demo):
    reach(keyed, "GET", "/healthz", 200)
    reach(keyed, "GET", "/readyz", 200)
    reach(keyed, "GET", "/metrics", 200)
    reach(keyed, "GET", "/v1/architectures", 200)
    reach(
        keyed, "GET", "/v1/architectures/{name}", 200, "/v1/architectures/mlp", params={"config": '{"sizes": [4, 2]}'}
    )
    reach(keyed, "GET", "/v1/workers", 200)
    reach(keyed, "GET", "/v1/usage", 200)
    ids = {}
    for kind in ("model", "dataset"):
        ids[kind] = demo_upload(keyed, demo, kind).json()["id"]
        item = f"/v1/{kind}s/{{{kind}_id}}"
        reach(keyed, "GET", f"/v1/{kind}s", 200)
        reach(keyed, "GET", item, 200, f"/v1/{kind}s/{ids[kind]}")
        reach(keyed, "POST", f"/v1/{kind}s", 400, headers={"Content-Type": "multipart/form-data"}, content=b"x")
        reach(keyed, "POST", f"/v1/{kind}s", 415, content=b"x", headers={"Content-Type": "text/plain"})
        reach(keyed, "POST", f"/v1/{kind}s", 422, files={"other": ("x", b"x")})
    body = job_body(ids["model"], ids["dataset"])
    job = reach(keyed, "POST", "/v1/jobs", 202, json=body, headers={"Idempotency-Key": "reach"}).json()
    reach(keyed, "POST", "/v1/jobs", 200, json=body, headers={"Idempotency-Key": "reach"})
    reach(keyed, "POST", "/v1/jobs", 400, content=b"{", headers={"Content-Type": "application/json"})
    reach(keyed, "POST", "/v1/jobs", 415, content=b"{}", headers={"Content-Type": "text/plain"})
    reach(keyed, "POST", "/v1/jobs", 422, json={**body, "model_id": UNKNOWN["{model_id}"]})
    reach(keyed, "GET", "/v1/jobs", 200)
    done = SuiteClient(http=keyed).wait(job["id"])
    assert done["status"] == "succeeded", done
    one = "/v1/jobs/{job_id}"
    reach(keyed, "GET", one, 200, f"/v1/jobs/{job['id']}")
    etag = reach(keyed, "GET", one + "/checkpoint", 200, f"/v1/jobs/{job['id']}/checkpoint").headers["etag"]
    reach(keyed, "GET", one + "/checkpoint", 304, f"/v1/jobs/{job['id']}/checkpoint", headers={"If-None-Match": etag})
    reach(keyed, "GET", one + "/report", 200, f"/v1/jobs/{job['id']}/report")
    reach(keyed, "POST", one + "/cancel", 409, f"/v1/jobs/{job['id']}/cancel")
    reach(keyed, "DELETE", one, 204, f"/v1/jobs/{job['id']}")
    for kind in ("model", "dataset"):
        reach(keyed, "DELETE", f"/v1/{kind}s/{{{kind}_id}}", 204, f"/v1/{kind}s/{ids[kind]}")


def test_queued_and_running_jobs_and_a_key_at_its_limits(isolated_settings, demo):
    """No worker listens here: jobs stay queued, and one is moved to running as a worker would move it."""
    sizes = demo["model"].stat().st_size + demo["train"].stat().st_size
    limits = {"quota_active_jobs": 2, "quota_submits_per_minute": 3, "quota_stored_bytes": sizes}
    caps = {"max_upload_bytes": 2 * 1024**2, "max_json_bytes": 64 * 1024}
    settings_made = isolated_settings(api_keys=[KEY], **caps, **limits)
    with settings_made as settings, TestClient(create_app(settings)) as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        ctx = ServiceContext.create(settings)
        for kind in ("model", "dataset"):
            big = {"file": ("big.safetensors", b"\0" * (3 * 1024**2))}
            reach(http, "POST", f"/v1/{kind}s", 413, files=big)
        body = job_body(demo_upload(http, demo, "model").json()["id"], demo_upload(http, demo, "dataset").json()["id"])
        for kind in ("model", "dataset"):
            demo_upload(http, demo, kind, status=403)
        queued, running = (reach(http, "POST", "/v1/jobs", 202, json=body).json()["id"] for _ in range(2))
        reach(http, "POST", "/v1/jobs", 409, json=body)
        reach(http, "POST", "/v1/jobs", 429, json=body)
        reach(http, "POST", "/v1/jobs", 413, json={**body, "padding": "x" * 65536})
        one = "/v1/jobs/{job_id}"
        reach(http, "GET", one + "/checkpoint", 409, f"/v1/jobs/{queued}/checkpoint")
        reach(http, "GET", one + "/report", 409, f"/v1/jobs/{queued}/report")
        reach(http, "DELETE", one, 409, f"/v1/jobs/{queued}")
        reach(http, "POST", one + "/cancel", 200, f"/v1/jobs/{queued}/cancel")
        assert ctx.jobs.start(running, {"name": "reach"})
        reach(http, "POST", one + "/cancel", 202, f"/v1/jobs/{running}/cancel")


def test_a_presigned_redirect_and_a_store_that_cannot_be_written(
    isolated_settings, s3_server, s3_bucket, demo, tmp_path
):
    s3 = {"storage_url": f"s3://{s3_bucket()}/gif", "s3_endpoint_url": s3_server, "s3_presign_expiry_s": 60}
    with isolated_settings(api_keys=[KEY], **s3) as settings, TestClient(create_app(settings)) as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        ctx = ServiceContext.create(settings)
        job = ctx.jobs.create(owner_of(KEY), {}, {}, settings.queue_name)
        assert job is not None and ctx.jobs.start(job.id, {"name": "reach"})
        content = b"edited weights"
        sha = hashlib.sha256(content).hexdigest()
        with ctx.artifacts.store.staging_file() as staged:
            staged.write_bytes(content)
            ctx.artifacts.add(staged, sha, f"job:{job.id}")
        assert ctx.jobs.succeed(job.id, edit_result(checkpoint={"sha256": sha, "size_bytes": len(content)}))
        redirect = reach(http, "GET", "/v1/jobs/{job_id}/checkpoint", 307, f"/v1/jobs/{job.id}/checkpoint")
        assert httpx.get(redirect.headers["location"]).content == content
        inputs = job_body(
            demo_upload(http, demo, "model").json()["id"], demo_upload(http, demo, "dataset").json()["id"]
        )

        # The same service, its S3 server gone (nothing listens at the endpoint): what needs the store is a 503.
        gone = {"s3_endpoint_url": f"http://127.0.0.1:{free_port()}", "s3_retries": 0, "s3_connect_timeout_s": 0.5}
        with TestClient(create_app(settings.model_copy(update=gone))) as down:
            down.headers["Authorization"] = f"Bearer {KEY}"
            reach(down, "GET", "/v1/jobs/{job_id}/checkpoint", 503, f"/v1/jobs/{job.id}/checkpoint")
            reach(down, "POST", "/v1/jobs", 503, json=inputs)
            for kind in ("model", "dataset"):
                demo_upload(down, demo, kind, status=503)

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("the store's directory cannot be made here")
    unwritable = {"storage_dir": not_a_directory}
    with isolated_settings() as settings, TestClient(create_app(settings.model_copy(update=unwritable))) as http:
        reach(http, "GET", "/readyz", 503)
    with isolated_settings(min_free_bytes=2**60) as settings, TestClient(create_app(settings)) as http:
        for kind in ("model", "dataset"):
            demo_upload(http, demo, kind, status=507)


UPLOADS, ONE_UPLOAD = "/v1/dataset-uploads", "/v1/dataset-uploads/{upload_id}"


def presigned(http: httpx.Client, content: bytes, status: int = 201) -> str:
    """Start a presigned dataset upload and PUT every part straight to the bucket; the upload's path."""
    started = reach(http, "POST", UPLOADS, status, json={"size_bytes": len(content), "filename": "t.safetensors"})
    size = started.json()["part_size_bytes"]
    for part in started.json()["parts"]:
        start = (part["number"] - 1) * size
        httpx.put(part["url"], content=content[start : start + size]).raise_for_status()
    return f"{UPLOADS}/{started.json()['id']}"


def test_presigned_dataset_uploads(isolated_settings, s3_server, s3_bucket, demo, tmp_path):
    """Each answer of /v1/dataset-uploads: a refusal at completion deletes the upload, so each takes a new one; the
    limits that completion enforces again are those of an app whose settings changed since the upload began."""
    content = demo["train"].read_bytes()
    local = isolated_settings(api_keys=[KEY], storage_url=f"file://{tmp_path / 'local'}")
    with local as settings, TestClient(create_app(settings)) as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        reach(http, "POST", UPLOADS, 409, json={"size_bytes": 10})
    s3 = {"storage_url": f"s3://{s3_bucket()}/gif", "s3_endpoint_url": s3_server, "max_upload_bytes": 2**30}
    with isolated_settings(api_keys=[KEY], **s3) as settings:

        def app(**changed: Any) -> TestClient:
            http = TestClient(create_app(settings.model_copy(update=changed)))
            http.headers["Authorization"] = f"Bearer {KEY}"
            return http

        with app() as http:
            reach(http, "POST", UPLOADS, 400, content=b"{", headers={"Content-Type": "application/json"})
            reach(http, "POST", UPLOADS, 422, json={"size_bytes": 0})
            reach(http, "POST", UPLOADS, 413, json={"size_bytes": 2**30 + 1})
            waiting = reach(http, "POST", UPLOADS, 201, json={"size_bytes": len(content)}).json()["id"]
            reach(http, "POST", ONE_UPLOAD + "/complete", 409, f"{UPLOADS}/{waiting}/complete")
            reach(http, "DELETE", ONE_UPLOAD, 204, f"{UPLOADS}/{waiting}")
            one = presigned(http, content)
            assert reach(http, "GET", ONE_UPLOAD, 200, one).json()["parts"] == []
            reach(http, "POST", ONE_UPLOAD + "/complete", 201, one + "/complete")
            reach(http, "POST", ONE_UPLOAD + "/complete", 422, presigned(http, b"not a dataset") + "/complete")
            refused_later = {"max_upload_bytes": len(content) - 1, "quota_stored_bytes": 1, "min_free_bytes": 2**60}
            for (setting, value), status in zip(refused_later.items(), (413, 403, 507), strict=True):
                one = presigned(http, content)
                with app(**{setting: value}) as changed:
                    reach(changed, "POST", ONE_UPLOAD + "/complete", status, one + "/complete")
            with app(quota_stored_bytes=1) as limited:
                reach(limited, "POST", UPLOADS, 403, json={"size_bytes": len(content)})
            with app(min_free_bytes=2**60) as full:
                reach(full, "POST", UPLOADS, 507, json={"size_bytes": len(content)})
            one = presigned(http, content)
            gone = {"s3_endpoint_url": f"http://127.0.0.1:{free_port()}", "s3_retries": 0, "s3_connect_timeout_s": 0.5}
            with app(**gone) as down:
                reach(down, "POST", UPLOADS, 503, json={"size_bytes": len(content)})
                reach(down, "GET", ONE_UPLOAD, 503, one)
                reach(down, "POST", ONE_UPLOAD + "/complete", 503, one + "/complete")
                reach(down, "DELETE", ONE_UPLOAD, 503, one)
            reach(http, "DELETE", ONE_UPLOAD, 204, one)


def test_a_body_that_comes_too_slowly(isolated_settings):
    """Served by uvicorn (the in-process client reads a body whole before the app sees it)."""

    def trickle() -> Iterator[bytes]:
        for _ in range(20):  # 20 bytes/s for a second: cut off after 0.3 s of waiting
            time.sleep(0.05)
            yield b"-"

    pace = {"body_idle_timeout_s": 0.3, "body_min_bytes_per_s": 1000.0}
    with (
        isolated_settings(**pace) as settings,
        serving(create_app(settings), settings) as url,
        httpx.Client(base_url=url) as http,
    ):
        for path in ("/v1/models", "/v1/datasets", "/v1/jobs", "/v1/dataset-uploads"):
            content_type = (
                "multipart/form-data; boundary=b" if path in ("/v1/models", "/v1/datasets") else "application/json"
            )
            reach(http, "POST", path, 408, content=trickle(), headers={"Content-Type": content_type})


def test_every_documented_response_was_reached():
    missing = sorted(DOCUMENTED - reached)
    assert not missing, f"documented but never answered: {missing}"
