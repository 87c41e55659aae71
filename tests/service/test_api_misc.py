"""Architectures, health, metrics, the OpenAPI snapshot, and problem documents for routing errors."""

from __future__ import annotations

import json

from gif.models.registry import architectures, parameter_listing
from service.tools.openapi_snapshot import SNAPSHOT, render


def listing(http, **params) -> list[dict]:
    """Every page of GET /v1/architectures, followed by next_cursor."""
    items, cursor = [], None
    while True:
        page = http.get("/v1/architectures", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        items += page["items"]
        if (cursor := page["next_cursor"]) is None:
            return items


def test_the_registry_is_listed_with_config_schemas(http):
    first = http.get("/v1/architectures", params={"limit": 3}).json()
    assert [a["name"] for a in first["items"]] == ["tinynet", "resnet18", "vgg11"] and first["next_cursor"]
    listed = listing(http, limit=200)
    assert [a["name"] for a in listed] == [a.name for a in architectures()]
    assert {a["family"] for a in listed} == {"paper", "torchvision", "timm"}
    assert all(a["description"] and a["config_schema"]["type"] == "object" for a in listed[:300])
    paper = listing(http, family="paper")
    assert [a["name"] for a in paper] == ["tinynet", "resnet18", "vgg11", "mlp"]
    resnets = listing(http, family="torchvision", q="ResNet")
    assert {a["name"] for a in resnets} >= {
        "torchvision.resnet18",
        "torchvision.resnet50",
        "torchvision.wide_resnet50_2",
    }
    assert all(a["family"] == "torchvision" and "resnet" in a["name"] for a in resnets)
    tiny = listing(http, family="timm", q="test_vit")
    assert {a["name"] for a in tiny} >= {"timm.test_vit", "timm.test_vit2"}
    assert http.get("/v1/architectures/timm.test_vit", params={"config": '{"num_classes": 4}'}).json()["num_parameters"]


def test_a_torchvision_architecture_is_described_and_its_config_checked(http, problem):
    config = {"num_classes": 10}
    response = http.get("/v1/architectures/torchvision.mobilenet_v3_small", params={"config": json.dumps(config)})
    assert response.json() == parameter_listing({"name": "torchvision.mobilenet_v3_small", "config": config})
    bad = {"num_classes": 10, "wingspan": 3}
    body = problem(
        http.get("/v1/architectures/torchvision.resnet18", params={"config": json.dumps(bad)}),
        422,
        "unknown-architecture",
    )
    assert "wingspan" in body["errors"][0]["detail"]


def test_an_architecture_lists_its_parameters_as_the_engine_does(http):
    config = {"sizes": [64, 32, 10], "activation": "tanh"}
    response = http.get("/v1/architectures/mlp", params={"config": json.dumps(config)})
    assert response.status_code == 200
    assert response.json() == parameter_listing({"name": "mlp", "config": config})
    assert http.get("/v1/architectures/tinynet").json()["num_parameters"] > 0


def test_bad_architecture_queries_are_4xx(http, problem):
    problem(http.get("/v1/architectures/transformer"), 404, "not-found")
    body = problem(http.get("/v1/architectures/mlp", params={"config": "{"}), 422, "validation-error")
    assert body["errors"][0]["parameter"] == "config"
    body = problem(http.get("/v1/architectures/mlp", params={"config": '{"sizes": [3]}'}), 422, "unknown-architecture")
    assert body["errors"][0]["parameter"] == "config"


def test_health_and_readiness(http):
    """No worker listens on these tests' queue: the API is up, and says that jobs would wait."""
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "redis": "ok",
        "storage": "ok",
        "workers": "none healthy",
        "reason": f"no worker listens on queue {http.app.state.context.settings.queue_name!r}",
    }
    assert http.get("/v1/workers").json() == {"workers": [], "healthy": False, "reason": ready.json()["reason"]}


def test_readiness_fails_without_redis(settings, problem):
    from fastapi.testclient import TestClient

    from service.tools.launch import free_port
    from service.web.app import create_app

    gone = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(gone)) as http:
        problem(http.get("/readyz"), 503, "service-unavailable")
        problem(http.get("/v1/models/model_00000000000000000000"), 503, "service-unavailable")


def test_metrics_count_jobs_by_status_queue_depth_and_requests(http, inputs):
    body = {**inputs, "request": {"kind": "remove_class", "classes": [1]}}
    assert http.post("/v1/jobs", json=body).status_code == 202
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['gif_jobs{status="queued"}'] >= 1
    assert samples["gif_queue_depth"] >= 1
    assert 'gif_job_duration_seconds_count{status="succeeded"}' in samples
    assert samples['gif_http_requests_total{method="POST",route="/v1/jobs",status="202"}'] >= 1


def test_the_committed_openapi_schema_matches_the_app():
    assert SNAPSHOT.read_text() == render(), "openapi/openapi.json is stale: run `make openapi`"


def test_swagger_ui_and_job_examples(http):
    assert "swagger-ui" in http.get("/docs").text
    body = http.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]
    examples = body["content"]["application/json"]["examples"]
    assert set(examples) == {"remove_class", "remove_samples", "relabel"}


def test_routing_errors_are_problems(http, problem):
    problem(http.get("/v2/nothing"), 404, "not-found")
    problem(http.put("/v1/jobs"), 405, "method-not-allowed")


def test_each_resource_is_its_records_public_fields():
    """A record class names its resource first; the response model is that resource, and a record is served as it."""
    from service.core.catalog import DatasetBase, DatasetRecord, ModelBase, ModelRecord
    from service.core.jobs import JobBase, JobRecord
    from service.web.schemas import DatasetOut, JobOut, ModelOut

    common = {"owner": "o", "seq": 1, "created_at": "now"}
    file = {"sha256": "0" * 64, "size_bytes": 1, **common}
    records = {
        JobOut: JobRecord(
            id="job_0",
            status="queued",
            spec={"request": {"kind": "remove_class", "classes": [0]}},
            inputs={},
            queue="q",
            **common,
        ),
        ModelOut: ModelRecord(
            id="model_0", architecture={"name": "mlp"}, num_parameters=1, num_classes=2, format="pt2", **file
        ),
        DatasetOut: DatasetRecord(
            id="dataset_0", num_samples=2, num_classes=1, sample_shape=[1], class_counts=[2], format="npz", **file
        ),
    }
    for (out, record), base in zip(records.items(), (JobBase, ModelBase, DatasetBase), strict=True):
        assert issubclass(out, base) and isinstance(record, base)
        assert list(out.model_fields) == list(base.model_fields)
        assert list(record.public()) == list(out.model_fields)
        out.model_validate(record.public())


def test_what_the_schema_fuzzer_found_is_a_clear_4xx(http, problem):
    """Each a finding of tests/service/test_api_fuzz.py, kept as a plain regression test."""
    for route in ("/v1/jobs", "/v1/datasets"):  # "²" passed str.isdigit() and failed int(): a 500
        body = problem(http.get(route, params={"limit": 68, "cursor": "²"}), 422, "validation-error")
        assert body["errors"][0]["parameter"] == "cursor"
    body = problem(http.get("/v1/jobs", params={"statu": "failed"}), 422, "validation-error")  # was ignored: all jobs
    assert body["errors"] == [{"parameter": "statu", "in": "query", "detail": "not a parameter of this operation"}]
    assert http.get("/v1/jobs", params={"status": "failed", "limit": 5}).status_code == 200
    refused = problem(http.put("/v1/models"), 405, "method-not-allowed")  # Allow named POST only
    assert refused and http.put("/v1/models").headers["allow"] == "GET, POST"
