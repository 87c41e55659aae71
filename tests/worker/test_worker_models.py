"""Exported .pt2 programs over HTTP, edited by a real worker (zoo checkpoints by name: test_worker_jobs.py);
hostile or unusable programs refused at upload with nothing stored."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from gif.io.programs import load_program
from tests.support import stored_files


class FlatCNN(nn.Module):
    """Takes the demo's 8×8 digits; BatchNorm defined before the convolution it follows."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(6 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x.view(-1, 1, 8, 8))))
        return self.head(nn.functional.avg_pool2d(x, 2).flatten(1))


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(FlatCNN().eval(), (torch.randn(2, 1, 8, 8),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path_factory.mktemp("program") / "flat_cnn.pt2"
    torch.export.save(program, str(path))
    return path


def test_an_exported_program_is_uploaded_edited_and_downloaded_as_pt2(api, inputs, program_file, tmp_path):
    model = api.upload_model(program_file)
    assert model["format"] == "pt2" and model["architecture"] == {"name": "exported", "config": {}}
    assert model["input_shape"] == [1, 8, 8] and model["num_parameters"] == sum(
        p.numel() for p in FlatCNN().parameters()
    )
    spec = {
        **inputs,
        "model_id": model["id"],
        "request": {"kind": "remove_class", "classes": [8]},
        "selection": {"ratio": 0.5},
        "solver": {"max_iterations": 10},
        "step": {"mode": "fixed", "scale": 1.0},
    }
    job = api.wait(api.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    assert {layer["module"] for layer in job["result"]["selection"]["layers"]} == {"conv", "head"}
    weights = load_safetensors(api.checkpoint(job["id"]))
    response = api.http.get(f"/v1/jobs/{job['id']}/checkpoint", params={"format": "pt2"})
    assert response.status_code == 200, response.text
    assert hashlib.sha256(response.content).hexdigest() == job["result"]["program"]["sha256"]
    assert response.headers["etag"] == f'"{job["result"]["program"]["sha256"]}"'
    (tmp_path / "edited.pt2").write_bytes(response.content)
    edited = load_program(tmp_path / "edited.pt2")
    assert all(torch.equal(edited.state_dict()[k], weights[k]) for k in weights)
    original = load_program(program_file).state_dict()
    registered = api.http.get(f"/v1/models/{job['result']['model_id']}").json()  # the edit, as a model to edit again
    assert registered["format"] == "pt2" and registered["sha256"] == job["result"]["program"]["sha256"]
    assert (registered["parent_model_id"], registered["job_id"]) == (model["id"], job["id"])
    moved = {k for k in original if not torch.equal(edited.state_dict()[k], original[k])}
    assert moved and moved <= {"conv.weight", "conv.bias", "head.weight", "head.bias"}  # BatchNorm is never a target


def test_programs_refuse_what_they_cannot_do(api, inputs, program_file, problem, demo):
    model = api.upload_model(program_file)
    base = {**inputs, "model_id": model["id"], "request": {"kind": "remove_class", "classes": [8]}}
    body = problem(api.http.post("/v1/jobs", json={**base, "retrain": {"epochs": 1}}), 422, "invalid-spec")
    assert [e["pointer"] for e in body["errors"]] == ["/retrain"]
    safetensors_job = api.wait(api.submit(base)["id"])
    problem(
        api.http.get(f"/v1/jobs/{safetensors_job['id']}/checkpoint", params={"format": "bad"}), 422, "validation-error"
    )
    demo_job = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [8]}})
    demo_job = api.wait(demo_job["id"])
    body = problem(api.http.get(f"/v1/jobs/{demo_job['id']}/checkpoint", params={"format": "pt2"}), 409, "conflict")
    assert "exported" in body["detail"]
    with open(demo["model"], "rb") as fh:  # weights need their architecture
        body = problem(api.http.post("/v1/models", files={"file": ("m.safetensors", fh)}), 422, "unknown-architecture")
    assert body["errors"][0]["pointer"] == "/architecture"
    with open(program_file, "rb") as fh:  # a program carries its own
        body = problem(
            api.http.post(
                "/v1/models",
                files={"file": ("p.pt2", fh)},
                data={"architecture": '{"name": "mlp", "config": {"sizes": [64, 10]}}'},
            ),
            422,
            "unknown-architecture",
        )
    assert "carries its own" in body["detail"]


def test_a_hostile_program_is_refused_and_nothing_is_stored(api, program_file, problem, stack_settings, tmp_path):
    import zipfile

    hostile = io.BytesIO()
    with zipfile.ZipFile(program_file) as zin, zipfile.ZipFile(hostile, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json"):
                data = data.replace(b'"torch.ops.aten.conv2d.default"', b'"builtins.exec"')
            zout.writestr(info.filename, data)
    before = stored_files(stack_settings)
    body = problem(api.http.post("/v1/models", files={"file": ("h.pt2", hostile.getvalue())}), 422, "invalid-weights")
    assert "builtins.exec" in body["errors"][0]["detail"]
    assert stored_files(stack_settings) == before
