"""POST /v1/models and /v1/datasets: streamed, hashed, validated, content-addressed; every bad file is a 4xx."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from gif_client.client import UploadError
from gif_client.problems import ValidationFailed
from PIL import Image
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from gif.models.registry import build_model
from service.web.app import create_app
from tests.support import SuiteClient, stored_files

DIGITS_MLP = {"name": "mlp", "config": {"sizes": [64, 32, 10], "activation": "relu"}}


def post_model(http, content: bytes, architecture=DIGITS_MLP, name="weights.safetensors"):
    return http.post("/v1/models", files={"file": (name, content)}, data={"architecture": json.dumps(architecture)})


def post_dataset(http, content: bytes, name="data.safetensors"):
    return http.post("/v1/datasets", files={"file": (name, content)})


def digits_weights(sizes=(64, 32, 10)) -> dict[str, torch.Tensor]:
    return build_model({"name": "mlp", "config": {"sizes": list(sizes)}}).state_dict()


def torch_zip(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_model_upload_is_hashed_recorded_and_served(http, demo):
    content = demo["model"].read_bytes()
    response = post_model(http, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/models/{body['id']}"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size_bytes"] == len(content)
    assert body["num_parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    assert body["architecture"] == DIGITS_MLP and body["format"] == "safetensors"
    assert http.get(f"/v1/models/{body['id']}").json() == body
    assert body["id"] in [m["id"] for m in http.get("/v1/models").json()["items"]]


def test_torch_zip_state_dict_is_accepted(http):
    response = post_model(http, torch_zip(digits_weights()), name="weights.pt")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "torch_zip"


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not json"),
        (b"\xff" * 64, "unrecognised"),
        (pickle.dumps({"layers.0.weight": [1.0, 2.0]}), "pickle"),
        (torch_zip({"layers.0.weight": {"a nested": "dict"}}), "flat state dict"),
        (b"", "unrecognised"),
    ],
    ids=["malformed-safetensors", "garbage", "pickle", "torch-zip-not-a-state-dict", "empty"],
)
def test_unreadable_or_unsafe_weights_are_refused(http, problem, settings, content, words):
    before = stored_files(settings)
    body = problem(post_model(http, content), 422, "invalid-weights")
    assert words in body["detail"].lower()
    assert body["errors"][0]["pointer"] == "/file"
    assert stored_files(settings) == before  # nothing half-written is left behind


def test_a_pickled_object_inside_a_torch_zip_is_not_unpickled(http, problem):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    body = problem(post_model(http, torch_zip({"layers.0.weight": Payload()}), name="evil.pt"), 422, "invalid-weights")
    assert "torch state dict" in body["detail"]


def test_every_key_and_shape_mismatch_is_reported_at_once(http, problem):
    weights = digits_weights((64, 16, 10))  # hidden width 16 where the architecture says 32
    weights["extra.weight"] = torch.zeros(3)
    del weights["layers.2.bias"]
    body = problem(post_model(http, safetensors_bytes(weights)), 422, "invalid-weights")
    details = [e["detail"] for e in body["errors"]]
    assert any("missing keys: layers.2.bias" in d for d in details)
    assert any("unexpected keys: extra.weight" in d for d in details)
    assert any(d.startswith("layers.0.weight: shape [16, 64]") for d in details)
    assert any(d.startswith("layers.0.bias: shape [16]") for d in details)
    assert any(d.startswith("layers.2.weight: shape [10, 16]") for d in details)
    assert all(e["pointer"] == "/file" for e in body["errors"])


def test_nan_weights_are_refused(http, problem):
    weights = digits_weights()
    weights["layers.2.weight"][3, 5] = float("nan")
    body = problem(post_model(http, safetensors_bytes(weights)), 422, "invalid-weights")
    assert any("layers.2.weight: contains NaN or Inf" in e["detail"] for e in body["errors"])


@pytest.mark.parametrize(
    "architecture, pointer_detail",
    [
        ('{"name": "transformer"}', "unknown architecture"),
        ('{"name": "mlp", "config": {"sizes": [64]}}', "sizes"),
        ("{not json", "not valid json"),
    ],
)
def test_bad_architectures_name_the_field(http, problem, demo, architecture, pointer_detail):
    response = http.post(
        "/v1/models", files={"file": ("m.safetensors", demo["model"].read_bytes())}, data={"architecture": architecture}
    )
    assert response.status_code == 422
    body = response.json()
    assert all(e["pointer"] == "/architecture" for e in body["errors"])
    assert pointer_detail in (body["detail"] + " ".join(e["detail"] for e in body["errors"])).lower()


def test_missing_form_fields_are_all_listed(http, problem):
    body = problem(
        http.post("/v1/models", files={"architecture": (None, json.dumps(DIGITS_MLP))}), 422, "validation-error"
    )
    assert [e["pointer"] for e in body["errors"]] == ["/file"]
    body = problem(
        http.post("/v1/models", data={"unrelated": "x"}, files={"other": ("x", b"x")}), 422, "validation-error"
    )
    assert body["errors"][0]["pointer"] in ("/unrelated", "/other")


def test_wrong_content_types_are_refused(http, problem, demo):
    problem(http.post("/v1/models", json={"architecture": DIGITS_MLP}), 415, "unsupported-media-type")
    problem(
        http.post(
            "/v1/datasets", content=demo["train"].read_bytes(), headers={"content-type": "application/octet-stream"}
        ),
        415,
        "unsupported-media-type",
    )
    problem(
        http.post("/v1/datasets", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
        400,
        "bad-request",
    )


def test_a_truncated_multipart_body_leaves_nothing_behind(http, problem, settings):
    before = stored_files(settings)
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d"\r\n\r\n' + b"x" * 5000
    problem(
        http.post("/v1/datasets", content=body, headers={"content-type": "multipart/form-data; boundary=b"}),
        400,
        "bad-request",
    )
    assert stored_files(settings) == before


def test_an_interrupted_upload_leaves_nothing_behind(http, settings):
    """The client goes away mid-file: the staging file is removed and nothing is recorded."""
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d"\r\n\r\n'
    messages = [
        {"type": "http.request", "body": head + b"\0" * 3 * 2**20, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/datasets",
        "raw_path": b"/v1/datasets",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        "server": ("test", 80),
        "client": ("test", 1),
    }
    before, listed = stored_files(settings), http.get("/v1/datasets").json()["items"]
    asyncio.run(http.app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert stored_files(settings) == before
    assert http.get("/v1/datasets").json()["items"] == listed


def test_oversize_uploads_are_cut_off_with_413(settings, demo, problem):
    small = settings.model_copy(update={"max_upload_bytes": 4096, "max_json_bytes": 256})
    before = stored_files(settings)
    with TestClient(create_app(small)) as http:
        problem(post_dataset(http, demo["train"].read_bytes()), 413, "payload-too-large")

        def chunks():  # no Content-Length: the cap applies while the body streams
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="d"\r\n\r\n'
            for _ in range(10):
                yield b"\0" * 1024

        problem(
            http.post("/v1/datasets", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}),
            413,
            "payload-too-large",
        )
        problem(
            http.post("/v1/jobs", json={"request": {"kind": "remove_samples", "indices": list(range(200))}}),
            413,
            "payload-too-large",
        )
    assert stored_files(settings) == before


def test_dataset_upload_records_what_jobs_are_checked_against(http, demo):
    response = post_dataset(http, demo["train"].read_bytes())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sample_shape"] == [1, 8, 8] and body["num_classes"] == 10
    assert sum(body["class_counts"]) == body["num_samples"] == 1438
    assert body["sha256"] == hashlib.sha256(demo["train"].read_bytes()).hexdigest()


def test_npz_datasets_are_accepted(http):
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((6, 4), dtype=np.uint8), y=np.array([0, 1, 2, 0, 1, 2], dtype=np.int64))
    response = post_dataset(http, buffer.getvalue(), name="d.npz")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "npz" and response.json()["class_counts"] == [2, 2, 2]


@pytest.mark.parametrize(
    "tensors, words",
    [
        ({"x": torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), "y": torch.tensor([0, 1])}, "nan"),
        ({"x": torch.zeros(2, 3), "y": torch.tensor([0, -1])}, "negative labels"),
        ({"x": torch.zeros(2, 3), "y": torch.tensor([0.0, 1.0])}, "integer labels"),
        ({"x": torch.zeros(3, 3), "y": torch.tensor([0, 1])}, "3 samples but y has 2"),
        ({"x": torch.zeros(2, 3)}, "the tensors 'x' and 'y'"),
    ],
    ids=["nan", "negative-labels", "float-labels", "length-mismatch", "no-labels"],
)
def test_invalid_datasets_are_refused(http, problem, tensors, words):
    body = problem(post_dataset(http, safetensors_bytes(tensors)), 422, "invalid-dataset")
    assert words in (body["detail"] + " ".join(e["detail"] for e in body.get("errors", []))).lower()


def test_a_text_file_is_not_a_dataset(http, problem):
    body = problem(post_dataset(http, b"x,y\n0.1,3\n", name="data.csv"), 422, "invalid-dataset")
    assert body["errors"][0]["pointer"] == "/file"


def image_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def shard(samples: dict[str, int], seed: int) -> bytes:
    """A WebDataset shard: ``<key>.png`` beside ``<key>.cls`` for each key."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for key, label in samples.items():
            for name, data in (
                (f"{key}.png", png(rng.integers(0, 256, (5, 4), dtype=np.uint8))),
                (f"{key}.cls", b"%d" % label),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_folder_of_webdataset_shards_is_sent_as_one_and_a_key_in_two_shards_is_refused(http, tmp_path, problem):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "000.tar").write_bytes(shard({"a": 0, "b": 1}, seed=1))
    (folder / "001.tar").write_bytes(shard({"c": 2, "d": 1, "e": 0}, seed=2))
    api = SuiteClient(http=http)
    record = api.upload_dataset(folder)
    assert record["source"] == "webdataset" and record["num_samples"] == 5 and record["class_counts"] == [2, 2, 1]
    assert api.upload_once("datasets", folder)["id"] == record["id"]  # the same shards join to the same bytes
    (folder / "002.tar").write_bytes(shard({"a": 1}, seed=3))
    with pytest.raises(ValidationFailed) as refused:
        api.upload_dataset(folder)
    assert refused.value.code == "invalid-dataset" and "'a'" in str(refused.value)
    (folder / "002.tar").write_bytes(b"not a tar")
    with pytest.raises(UploadError, match="002.tar: not a readable tar"):
        api.upload_dataset(folder)


def test_an_image_archive_is_stored_as_uint8_tensors_with_ids_and_class_names(http, settings):
    rng = np.random.default_rng(0)
    pixels = {f"{c}/{i}.png": rng.integers(0, 256, (4, 3), dtype=np.uint8) for c in ("dog", "cat") for i in range(3)}
    content = image_zip({name: png(p) for name, p in pixels.items()})
    response = http.post(
        "/v1/datasets", files={"file": ("pets.zip", content)}, data={"classes": json.dumps(["dog", "cat", "cow"])}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["source"] == "imagefolder" and body["has_ids"] and body["class_names"] == ["dog", "cat", "cow"]
    assert body["sample_shape"] == [1, 4, 3] and body["class_counts"] == [3, 3] and body["format"] == "safetensors"
    assert body["source_sha256"] == hashlib.sha256(content).hexdigest() != body["sha256"]
    assert body["sha256"] in stored_files(settings) and body["source_sha256"] not in stored_files(settings)
    stored = settings.storage_dir.rglob(body["sha256"])
    x = load_file(next(stored))["x"]
    assert x.dtype == torch.uint8 and torch.equal(x[0, 0], torch.from_numpy(pixels["dog/0.png"]))


def test_hostile_archives_and_bad_classes_are_refused_and_nothing_is_stored(http, settings, problem):
    before = stored_files(settings)
    traversal = io.BytesIO()
    with tarfile.open(fileobj=traversal, mode="w") as tf:
        info = tarfile.TarInfo("../up/1.png")
        data = png(np.zeros((2, 2), dtype=np.uint8))
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    body = problem(post_dataset(http, traversal.getvalue(), name="d.tar"), 422, "invalid-dataset")
    assert body["errors"] == [
        {"pointer": "/file", "detail": "../up/1.png: a member name must not climb out of the archive with '..'"}
    ]
    cut = image_zip({"a/1.png": png(np.zeros((64, 64), dtype=np.uint8))[:60]})
    body = problem(post_dataset(http, cut, name="d.zip"), 422, "invalid-dataset")
    assert body["errors"][0]["detail"].startswith("a/1.png: unreadable image")
    good = image_zip({"a/1.png": png(np.zeros((2, 2), dtype=np.uint8))})
    for classes, detail in (("cat", "a JSON list"), ('["a", "a"]', "must not repeat")):
        response = http.post("/v1/datasets", files={"file": ("d.zip", good)}, data={"classes": classes})
        assert detail in problem(response, 422, "validation-error")["errors"][0]["detail"]
    tensors = safetensors_bytes({"x": torch.rand(2, 3), "y": torch.tensor([0, 1])})
    response = http.post("/v1/datasets", files={"file": ("d.safetensors", tensors)}, data={"classes": '["a"]'})
    assert problem(response, 422, "validation-error")["errors"][0]["pointer"] == "/classes"
    assert stored_files(settings) == before


def test_identical_uploads_share_one_blob_until_the_last_is_deleted(http, settings, problem):
    content = safetensors_bytes({"x": torch.rand(5, 2), "y": torch.tensor([0, 1, 0, 1, 1])})
    first, second = (post_dataset(http, content).json() for _ in range(2))
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"]
    assert http.delete(f"/v1/datasets/{first['id']}").status_code == 204
    problem(http.get(f"/v1/datasets/{first['id']}"), 404, "not-found")
    assert first["sha256"] in stored_files(settings)
    assert http.delete(f"/v1/datasets/{second['id']}").status_code == 204
    assert first["sha256"] not in stored_files(settings)
    problem(http.delete(f"/v1/datasets/{second['id']}"), 404, "not-found")
    problem(http.get(f"/v1/datasets/{first['id']}:x"), 404, "not-found")


def test_a_decompression_bomb_is_refused_with_413_and_nothing_stored(http, problem, settings, tmp_path):
    from tests.gif.io.test_files import compressed_zeros_npz

    compressed_zeros_npz(tmp_path / "bomb.npz", 12_000)
    before = stored_files(settings)
    body = problem(post_dataset(http, (tmp_path / "bomb.npz").read_bytes(), name="bomb.npz"), 413, "payload-too-large")
    assert body["errors"][0]["pointer"] == "/file" and "expands" in body["errors"][0]["detail"]
    assert stored_files(settings) == before


def test_a_model_declares_its_input_transform_and_jobs_are_checked_against_what_it_feeds(http, demo, problem):
    images = image_zip({f"{c}/{i}.png": png(np.zeros((10, 10), dtype=np.uint8)) for c in "ab" for i in range(3)})
    dataset = post_dataset(http, images, name="d.zip").json()
    content = demo["model"].read_bytes()

    def model_with(transform):
        data = {"architecture": json.dumps(DIGITS_MLP)} | ({"input": json.dumps(transform)} if transform else {})
        return http.post("/v1/models", files={"file": ("m.safetensors", content)}, data=data)

    cropping = model_with({"crop": 8, "mean": [0.5], "std": [0.25]})
    assert cropping.status_code == 201 and cropping.json()["input_transform"] == {
        "crop": 8,
        "mean": [0.5],
        "std": [0.25],
    }
    bad = problem(model_with({"crop": 8, "mean": [0.5]}), 422, "validation-error")
    assert bad["errors"][0]["pointer"] == "/input" and "together" in bad["errors"][0]["detail"]
    assert problem(model_with({"zoom": 2}), 422, "validation-error")["errors"][0]["pointer"] == "/input/zoom"
    job = {"train_dataset_id": dataset["id"], "request": {"kind": "remove_class", "classes": [0]}}
    assert http.post("/v1/jobs", json={**job, "model_id": cropping.json()["id"]}).status_code == 202
    plain = problem(http.post("/v1/jobs", json={**job, "model_id": model_with(None).json()["id"]}), 422, "invalid-spec")
    assert "[1, 10, 10]" in plain["errors"][0]["detail"]
    too_big = problem(
        http.post("/v1/jobs", json={**job, "model_id": model_with({"crop": 12}).json()["id"]}), 422, "invalid-spec"
    )
    assert too_big["errors"] == [
        {
            "pointer": "/train_dataset_id",
            "detail": "the model's input transform cannot take the training samples: a centre crop of 12 does not "
            "fit in 10×10 images",
        }
    ]
