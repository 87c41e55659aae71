"""On a machine with CUDA: the engine agrees with the CPU, and jobs run on the GPU through a real worker.

Skipped without CUDA (CI has none). Run them where a GPU is: ``python -m pytest -m cuda tests/gpu``.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from gif.edit import run
from gif.spec import JobSpec
from tests.support import assert_the_same_edit

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def class_removal_spec() -> JobSpec:
    """A fixed step, so that the edit is exactly θ_J + Δ_J and the solved vectors can be compared."""
    return JobSpec.model_validate(
        {
            "request": {"kind": "remove_class", "classes": [8]},
            "step": {"mode": "fixed", "scale": 1.0},
            "solver": {"max_iterations": 40, "tolerance": 1e-4, "hvp": "double_backward"},
        }
    )


def test_a_class_removal_on_cuda_agrees_with_the_cpu(mnist_tinynet, mnist_split):
    train, held_out = mnist_split
    original = {k: v.detach().clone() for k, v in mnist_tinynet.state_dict().items()}
    outcomes = {
        device: run(class_removal_spec(), mnist_tinynet, train, held_out, device=device) for device in ("cpu", "cuda")
    }
    cpu, cuda = (outcomes[d] for d in ("cpu", "cuda"))
    assert cuda.result.device.type == "cuda" and cuda.result.device.peak_memory_bytes > 0
    assert cpu.result.selection.layers == cuda.result.selection.layers
    assert_the_same_edit({d: o.state_dict for d, o in outcomes.items()}, original)


def test_a_job_runs_on_the_gpu_through_a_real_worker(api, inputs, demo):
    job = api.wait(api.submit({**json.loads(demo["job"].read_text()), **inputs})["id"])
    assert job["status"] == "succeeded", job["error"]
    device = job["result"]["device"]
    assert device["type"] == "cuda" and device["name"] and device["peak_memory_bytes"] > 0


def test_a_killed_job_process_on_the_gpu_costs_that_job_only(api, inputs, demo, long_solve):
    job = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [1]}, "solver": long_solve})
    api.wait(job["id"], until=("running",))
    os.kill(api.http.app.state.context.jobs.get(job["id"]).worker["pid"], signal.SIGKILL)
    lost = api.wait(job["id"], timeout_s=60)
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker-lost" and lost["error"]["retryable"] is True
    after = api.wait(api.submit({**json.loads(demo["job"].read_text()), **inputs})["id"])
    assert after["status"] == "succeeded" and after["result"]["device"]["type"] == "cuda", after["error"]
