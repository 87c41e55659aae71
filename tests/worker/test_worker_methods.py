"""A job of several methods through a real worker: every method's checkpoint is stored and downloadable by name, the
chosen one by default, and the report compares them."""

from __future__ import annotations

import hashlib
import json

from gif_client import Client

from tests.support import stored_files

METHODS = ["gif", "first_order", "fine_tune"]


def test_a_job_of_several_methods_keeps_each_checkpoint_and_compares_them(api, inputs, demo, tmp_path, stack_settings):
    spec = {
        **json.loads(demo["job"].read_text()),
        **inputs,
        "methods": METHODS,
        "training": {"epochs": 1, "learning_rates": [0.05]},
    }
    job = api.wait(api.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    comparison = result["comparison"]
    assert [c["method"] for c in comparison] == METHODS and result["chosen_by"]
    chosen = [c for c in comparison if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["method"] == result["method"]
    assert chosen[0]["objective"] == max(c["objective"] for c in comparison)
    assert chosen[0]["checkpoint"] == result["checkpoint"]
    assert len({c["checkpoint"]["sha256"] for c in comparison}) == len(METHODS)

    url = f"/v1/jobs/{job['id']}/checkpoint"
    for entry in comparison:  # each method's file, its ETag and bytes the sha256 its entry records
        response = api.http.get(url, params={"method": entry["method"]})
        assert response.status_code == 200, response.text
        sha256 = entry["checkpoint"]["sha256"]
        assert response.headers["etag"] == f'"{sha256}"' and hashlib.sha256(response.content).hexdigest() == sha256
        assert len(response.content) == entry["checkpoint"]["size_bytes"]
        assert (
            f"{job['id']}.{entry['method']}.safetensors" in response.headers["content-disposition"] or entry["chosen"]
        )
    default = api.http.get(url)
    assert hashlib.sha256(default.content).hexdigest() == result["checkpoint"]["sha256"]
    refused = api.http.get(url, params={"method": "neg_grad_plus"})
    assert refused.status_code == 409 and "did not run method neg_grad_plus" in refused.json()["detail"]
    assert api.http.get(url, params={"method": "no-such-method"}).status_code == 422

    other = next(c for c in comparison if not c["chosen"])  # the client downloads any method's by name
    path = Client(http=api.http).download(job["id"], tmp_path / "other.safetensors", method=other["method"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == other["checkpoint"]["sha256"]

    page = api.http.get(f"/v1/jobs/{job['id']}/report").text
    assert "Methods compared" in page and "validation objective" in page
    assert all(f"<td>{m}</td>" in page for m in METHODS)

    # the other methods' files go with the job (the chosen one stays: it is also the edited model the job registered)
    others = {c["checkpoint"]["sha256"] for c in comparison if not c["chosen"]}
    assert others <= stored_files(stack_settings)
    assert api.http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not others & stored_files(stack_settings)
