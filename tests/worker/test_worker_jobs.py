"""Jobs through a real worker: edits, progress, cancellation, typed failures and time limits."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from gif.data import Dataset
from gif.io.files import write_safetensors
from gif.models.registry import build_model
from service.web.app import create_app
from tests.support import SuiteClient


def changed_entries(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> int:
    assert before.keys() == after.keys()
    return sum(int((before[k] != after[k]).sum()) for k in before)


def download(http, job: dict) -> dict[str, torch.Tensor]:
    """The edited checkpoint, checked against the sha256 the job reports (also its ETag)."""
    response = http.get(f"/v1/jobs/{job['id']}/checkpoint")
    assert response.status_code == 200
    checkpoint = job["result"]["checkpoint"]
    assert response.headers["etag"] == f'"{checkpoint["sha256"]}"'
    assert hashlib.sha256(response.content).hexdigest() == checkpoint["sha256"]
    assert len(response.content) == checkpoint["size_bytes"]
    assert (
        http.get(f"/v1/jobs/{job['id']}/checkpoint", headers={"If-None-Match": response.headers["etag"]}).status_code
        == 304
    )
    return load_safetensors(response.content)


def test_class_removal_end_to_end(api, inputs, demo):
    spec = {**json.loads(demo["job"].read_text()), **inputs}
    job = api.wait(api.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["started_at"] <= job["finished_at"] and job["progress"]["phase"] == "evaluation"
    result = job["result"]
    before, after = result["metrics"]["before"], result["metrics"]["after"]
    for key in ("test_accuracy", "forget_test_accuracy", "forget_accuracy", "score", "mia_efficacy"):
        assert 0.0 <= before[key] <= 1.0 and 0.0 <= after[key] <= 1.0
    assert after["forget_test_accuracy"] < before["forget_test_accuracy"]
    changed = changed_entries(load_file(demo["model"]), download(api.http, job))
    assert 0 < changed <= result["selection"]["num_selected"]


def test_relabel_end_to_end(api, inputs, demo):
    train = load_file(demo["train"])
    indices = list(range(0, 200, 10))
    labels = [(int(train["y"][i]) + 1) % 10 for i in indices]
    spec = {
        **inputs,
        "attack_dataset_id": inputs["eval_dataset_id"],  # stands in for triggered held-out inputs
        "request": {"kind": "relabel", "indices": indices, "labels": labels, "attack_target": 3},
        "selection": {"criterion": "topk_gradients", "ratio": 0.1},
        "solver": {"max_iterations": 30},
        "step": {"mode": "fixed", "scale": 1.0},
    }
    job = api.wait(api.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    metrics = job["result"]["metrics"]
    assert {"relabel_accuracy", "attack_success_rate", "clean_accuracy", "heldout_attack_success_rate"} <= set(
        metrics["after"]
    )
    changed = changed_entries(load_file(demo["model"]), download(api.http, job))
    assert 0 < changed <= job["result"]["selection"]["num_selected"]


def test_a_running_job_reports_progress_and_can_be_cancelled(api, inputs, long_solve):
    job = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [3]}, "solver": long_solve})
    api.wait(job["id"], until=("running",))
    deadline = time.monotonic() + 60
    while not (progress := api.job(job["id"])["progress"]) or not progress["iteration"]:
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)
    assert progress["phase"] == "solve" and progress["relative_residual"] > 0 and 0 < progress["fraction"] < 1
    response = api.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    cancelled = api.wait(job["id"], timeout_s=30)
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
    assert cancelled["result"] is None and not cancelled["cancel_requested"]
    assert api.http.get(f"/v1/jobs/{job['id']}/checkpoint").status_code == 409


def test_an_engine_refusal_fails_the_job_with_its_code(api, inputs):
    job = api.wait(
        api.submit({**inputs, "request": {"kind": "remove_class", "classes": [2]}, "selection": {"ratio": 1e-6}})["id"]
    )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid-spec" and job["error"]["type"] == "urn:gif:problem:invalid-spec"
    assert "selects no parameters" in job["error"]["detail"] and job["error"]["retryable"] is False


def test_a_job_past_its_time_limit_fails(stack_settings, inputs, worker, long_solve):
    with TestClient(create_app(stack_settings.model_copy(update={"job_timeout_s": 1}))) as http:
        api = SuiteClient(http=http)
        job = api.wait(
            api.submit({**inputs, "request": {"kind": "remove_class", "classes": [4]}, "solver": long_solve})["id"],
            timeout_s=60,
        )
    assert job["status"] == "failed" and job["error"]["code"] == "timeout", job["error"]


def test_finished_jobs_show_in_the_metrics(api, inputs):
    api.wait(
        api.submit(
            {**inputs, "request": {"kind": "remove_samples", "indices": [1, 2, 3]}, "solver": {"max_iterations": 5}}
        )["id"]
    )
    metrics = api.http.get("/metrics").text
    lines = [line for line in metrics.splitlines() if line.startswith("gif_job_duration_seconds_count")]
    assert any('status="succeeded"' in line and float(line.split()[-1]) >= 1 for line in lines)


@pytest.mark.parametrize("name", ["torchvision.mobilenet_v3_small", "timm.test_vit"])
def test_a_zoo_model_uploaded_by_name_is_edited(api, tmp_path, name):
    architecture = {"name": name, "config": {"num_classes": 4}}
    torch.manual_seed(0)
    model = build_model(architecture)
    write_safetensors(tmp_path / "model.safetensors", model.state_dict())
    Dataset(torch.randn(64, 3, 32, 32), torch.arange(64) % 4).save(tmp_path / "train.safetensors")
    uploaded = api.upload_model(tmp_path / "model.safetensors", architecture)
    assert uploaded["architecture"] == architecture
    train = api.upload_dataset(tmp_path / "train.safetensors")
    spec = {
        "model_id": uploaded["id"],
        "train_dataset_id": train["id"],
        "request": {"kind": "remove_class", "classes": [2]},
        "step": {"mode": "fixed", "scale": 1.0},
        "solver": {"max_iterations": 3, "hessian_samples": 32, "gradient_samples": 16, "batch_size": 16},
    }
    job = api.wait(api.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    edited = download(api.http, job)
    assert changed_entries(model.state_dict(), edited) > 0


def test_an_edited_model_can_be_edited_again(api, inputs, demo):
    spec = {**json.loads(demo["job"].read_text()), **inputs}
    first = api.wait(api.submit(spec)["id"])
    assert first["status"] == "succeeded", first["error"]
    edited = api.http.get(f"/v1/models/{first['result']['model_id']}").json()
    assert (edited["parent_model_id"], edited["job_id"]) == (inputs["model_id"], first["id"])
    assert edited["sha256"] == first["result"]["checkpoint"]["sha256"] and edited["format"] == "safetensors"
    again = {**spec, "model_id": edited["id"], "request": {"kind": "remove_class", "classes": [3]}}
    second = api.wait(api.submit(again)["id"])
    assert second["status"] == "succeeded", second["error"]
    once, twice = download(api.http, first), download(api.http, second)
    assert 0 < changed_entries(once, twice) <= second["result"]["selection"]["num_selected"]  # it started from the edit
    assert api.http.delete(f"/v1/jobs/{first['id']}").status_code == 204  # the edited model outlives its job
    assert api.http.get(f"/v1/models/{edited['id']}").status_code == 200
    assert api.checkpoint(second["id"])


def test_a_queued_job_runs_after_its_model_and_data_are_deleted(api, inputs, demo, long_solve):
    """Deleting uploads is not refused while jobs use them: each job holds its own reference to its files."""
    blocker = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [8]}, "solver": long_solve})
    api.wait(blocker["id"], until=("running",))  # the one worker is busy: the next job stays queued
    own = api.upload_demo(demo["model"].parent)
    job = api.submit({**json.loads(demo["job"].read_text()), **own})
    for kind, field in (("models", "model_id"), ("datasets", "train_dataset_id"), ("datasets", "eval_dataset_id")):
        assert api.http.delete(f"/v1/{kind}/{own[field]}").status_code == 204
    assert api.job(job["id"])["status"] == "queued"
    api.cancel(blocker["id"])
    ended = api.wait(job["id"])
    assert ended["status"] == "succeeded", ended["error"]
    assert api.checkpoint(job["id"])


def test_a_folder_of_images_is_edited_by_id_as_a_sample_of_a_larger_training_set(api, inputs, demo, tmp_path):
    """The demo's digits as a folder of 10×10 PNGs (a blank border around the 8×8 digit; one folder per class),
    uploaded by the client as a zip, for the demo model declared with the centre crop that takes the digit back out;
    examples are removed by their file names, and train_size says the upload is a sample of a 10× larger set."""
    train = load_file(demo["train"])
    folder = tmp_path / "digits"
    pixels = torch.nn.functional.pad((train["x"] * 255).round().to(torch.uint8), (1, 1, 1, 1))
    for i in range(0, len(train["y"]), 2):
        (folder / str(int(train["y"][i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i, 0].numpy()).save(folder / str(int(train["y"][i])) / f"{i:04d}.png")
    record = api.upload_dataset(folder)
    assert record["source"] == "imagefolder" and record["has_ids"] and record["sample_shape"] == [1, 10, 10]
    architecture = json.loads(demo["architecture"].read_text())
    model = api.upload_model(demo["model"], architecture, input_transform={"crop": 8})
    assert model["input_transform"] == {"crop": 8}
    assert api.upload_once("datasets", folder)["id"] == record["id"]  # the same folder zips to the same bytes
    removed = [f"{int(train['y'][i])}/{i:04d}.png" for i in (0, 2, 4, 6)]
    spec = {
        "model_id": model["id"],
        "train_dataset_id": record["id"],
        "train_size": 10 * record["num_samples"],
        "request": {"kind": "remove_samples", "ids": removed},
        "solver": {"max_iterations": 10},
        "step": {"mode": "fixed", "scale": 1.0},
    }
    job = api.wait(api.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    data = job["result"]["data"]
    assert data["coefficient"] == pytest.approx(4 / (10 * record["num_samples"] - 4))
    assert data["train_size"] == 10 * record["num_samples"] and data["input_transform"] == "centre crop 8"
    assert "centre crop 8" in api.http.get(f"/v1/jobs/{job['id']}/report").text
    unknown = api.wait(api.submit({**spec, "request": {"kind": "remove_samples", "ids": ["7/nope.png"]}})["id"])
    assert unknown["status"] == "failed" and "7/nope.png" in " ".join(unknown["error"]["problems"])
