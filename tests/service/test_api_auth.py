"""Optional API keys: every /v1 route needs one; what a key creates is invisible to other keys."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.web.app import create_app
from tests.support import SuiteClient


@pytest.fixture(scope="module")
def keyed(settings):
    with TestClient(create_app(settings.model_copy(update={"api_keys": ["alpha-key", "beta-key"]}))) as http:
        yield http


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/v1/architectures", "/v1/models", "/v1/datasets", "/v1/jobs"])
def test_v1_routes_need_a_valid_key(keyed, problem, path):
    response = keyed.get(path)
    problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    problem(keyed.get(path, headers=as_key("gamma-key")), 401, "unauthorized")
    assert keyed.get(path, headers=as_key("alpha-key")).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
def test_health_metrics_and_docs_stay_open(keyed, path):
    assert keyed.get(path).status_code == 200


def test_each_key_sees_only_its_own_uploads_and_jobs(keyed, demo, problem):
    alpha = SuiteClient(http=keyed)
    keyed.headers.update(as_key("alpha-key"))
    model = alpha.upload_model(demo["model"], json.loads(demo["architecture"].read_text()))
    train = alpha.upload_dataset(demo["train"])
    job = alpha.submit(
        {"model_id": model["id"], "train_dataset_id": train["id"], "request": {"kind": "remove_class", "classes": [3]}}
    )
    keyed.headers.update(as_key("beta-key"))
    for path in (f"/v1/models/{model['id']}", f"/v1/datasets/{train['id']}", f"/v1/jobs/{job['id']}"):
        problem(keyed.get(path), 404, "not-found")
        problem(keyed.delete(path), 404, "not-found")
    problem(keyed.post(f"/v1/jobs/{job['id']}/cancel"), 404, "not-found")
    for path in ("/v1/models", "/v1/datasets", "/v1/jobs"):
        assert keyed.get(path).json()["items"] == []
    body = problem(
        keyed.post(
            "/v1/jobs",
            json={
                "model_id": model["id"],
                "train_dataset_id": train["id"],
                "request": {"kind": "remove_class", "classes": [3]},
            },
        ),
        422,
        "unknown-reference",
    )
    assert len(body["errors"]) == 2
    keyed.headers.update(as_key("alpha-key"))
    assert keyed.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert [j["id"] for j in keyed.get("/v1/jobs").json()["items"]] == [job["id"]]
