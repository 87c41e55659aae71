"""Device names, CUDA failures and the memory the engine may use (gif/devices.py)."""

import mmap
import os
from pathlib import Path

import pytest
import torch

from gif.data import Dataset
from gif.devices import (
    available_memory_bytes,
    device_report,
    is_device_failure,
    open_device,
    reset_peak_memory,
    resolve_device,
)
from gif.edit import run
from gif.errors import InvalidSpecError
from gif.models.registry import build_model
from gif.spec import JobSpec


def test_auto_and_cpu_resolve_and_a_missing_gpu_is_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last visible device
    with pytest.raises(InvalidSpecError, match="CUDA device"):
        resolve_device(missing)


def test_cuda_errors_are_told_apart_from_the_jobs_own():
    assert is_device_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_device_failure(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm"))
    assert not is_device_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert not is_device_failure(ValueError("CUDA error"))


def test_the_cpu_report_names_the_processor_and_counts_peak_memory():
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident set cannot be reset here (Linux /proc/self/clear_refs)")
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    before = device_report(cpu)["peak_memory_bytes"]
    block = mmap.mmap(-1, 64 * 1024 * 1024)  # 64 MiB of fresh pages (freed heap memory may still be resident)
    block.write(b"\1" * len(block))
    after = device_report(cpu)
    assert after["type"] == "cpu" and after["name"] and after["index"] is None
    assert after["peak_memory_bytes"] >= before + 60 * 1024 * 1024
    assert 0 < available_memory_bytes(cpu) <= after["total_memory_bytes"]
    block.close()


def tiny_removal() -> tuple[JobSpec, torch.nn.Module, Dataset]:
    generator = torch.Generator().manual_seed(0)
    model = build_model({"name": "mlp", "config": {"sizes": [4, 8, 3]}})
    data = Dataset(torch.randn(90, 4, generator=generator), torch.arange(90) % 3)
    spec = JobSpec.model_validate(
        {"request": {"kind": "remove_class", "classes": [0]}, "solver": {"max_iterations": 2}}
    )
    return spec, model, data


def test_an_edit_in_a_fresh_process_on_cuda_opens_the_device_before_reading_its_memory(cuda_double):
    """On an H200 every job failed here: the peak-memory reset came before CUDA's allocator existed."""
    spec, model, data = tiny_removal()
    outcome = run(spec, model, data, data, device="cuda")
    device = outcome.result.device
    assert device.type == "cuda" and device.index == 0 and device.name == "CUDA test double"
    assert device.peak_memory_bytes > 0 and device.total_memory_bytes > 0
    assert cuda_double.events() == [f"{os.getpid()} context"]


def test_on_cuda_an_auto_product_batch_fits_the_free_memory_and_is_reported(cuda_double, monkeypatch):
    """The double's GPU has 15.5 GiB free: the whole Hessian sample is one batch; a smaller cache budget cuts it."""
    spec, model, data = tiny_removal()
    solver = {"max_iterations": 2, "hessian_samples": 60, "batch_size": "auto"}
    spec = spec.model_copy(update={"solver": spec.solver.model_validate(solver)})
    assert run(spec, model, data, data, device="cuda").result.solver.batch_size == 60
    monkeypatch.setenv("GIF_HVP_CACHE_BYTES", "1")
    assert run(spec, model, data, data, device="cuda").result.solver.batch_size == 1


def test_the_double_refuses_what_the_hardware_refuses(cuda_double):
    with pytest.raises(RuntimeError, match="Invalid device argument"):
        torch.cuda.reset_peak_memory_stats(0)  # the call that failed every GPU job
    assert torch.cuda.max_memory_allocated(0) == 0
    reset_peak_memory(torch.device("cuda"))  # opens the device first
    assert torch.cuda.is_initialized() and available_memory_bytes(torch.device("cuda:0")) > 0
    with pytest.raises(InvalidSpecError, match="does not exist"):
        resolve_device("cuda:1")


def test_cuda_in_a_process_forked_after_torch_work_fails_as_on_the_hardware(cuda_double):
    child = os.fork()
    if child == 0:  # pragma: no cover -- the child reports through its exit status only
        try:
            open_device(torch.device("cuda"))
        except RuntimeError as exc:
            os._exit(0 if "initialization error" in str(exc) else 2)
        os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert any("forked after torch work" in line for line in cuda_double.events())


def test_every_cuda_call_of_the_project_is_in_gif_devices():
    """One module to read for what the project asks of CUDA (and one to double in the tests)."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for package in ("gif", "service", "worker")
        for path in sorted((root / package).rglob("*.py"))
        if path.name != "devices.py" or path.parent.name != "gif"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "torch.cuda" in line or ".cuda(" in line
    ]
    assert offenders == []


def float32_precision() -> tuple[bool, bool, bool]:
    """Whether cuDNN, its convolutions (the newer switch) and CUDA's matrix products may use TF32."""
    backends = torch.backends
    return backends.cudnn.allow_tf32, backends.cudnn.conv.fp32_precision == "tf32", backends.cuda.matmul.allow_tf32


def test_an_edit_on_cuda_computes_float32_in_full_precision_and_restores_the_setting(cuda_double):
    """cuDNN's default TF32 convolutions (~1e-3 relative) moved the CUDA edit away from the CPU's."""
    before = float32_precision()
    seen: set[tuple[bool, bool, bool]] = set()
    spec, model, data = tiny_removal()
    run(spec, model, data, data, lambda *progress: seen.add(float32_precision()), device="cuda")
    assert seen == {(False, False, False)}
    assert float32_precision() == before
