"""Device names, CUDA failures and the memory the engine may use (gif/devices.py)."""

import mmap
import os

import pytest
import torch

from gif.devices import available_memory_bytes, device_report, is_device_failure, reset_peak_memory, resolve_device
from gif.errors import InvalidSpecError


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
