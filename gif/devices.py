"""Where an edit runs: device names, memory the engine may use, and what the device did.

Every CUDA-specific call of the project is here, each with the precondition real hardware enforces:
CUDA's caching allocator exists only once the process has initialised CUDA, so its statistics are read or
reset only after ``open_device`` (in a fresh process ``torch.cuda.reset_peak_memory_stats`` raises "Invalid
device argument" otherwise); kernels run asynchronously, so a wall-clock time is taken after ``synchronize``.
The CPU tests run the engine and the worker against a double of ``torch.cuda`` that enforces these rules
(tests/cuda_double); ``tensor_device`` is where the double keeps tensors in host memory.

``resolve_device`` turns the worker's setting (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) into a device;
``available_memory_bytes`` is what sizes the Hessian's graph cache (free CUDA memory, or the memory this
process may still take on the CPU, cgroup limits included); ``device_report`` is the result's ``device``
entry: the device, its name (the GPU model or the CPU's) and the peak memory of the edit.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gif.errors import InvalidSpecError

CGROUP_ROOT = Path("/sys/fs/cgroup")
_opened: set[tuple[int, int]] = set()  # (process, CUDA device index) pairs whose context and allocator exist


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto``: the current CUDA device when there is one, else the CPU; ``cuda:N`` must exist."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidSpecError(f"device {name!r} was asked for, but this process sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidSpecError(
                f"device {name!r} does not exist; {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return device


@contextlib.contextmanager
def full_float32(device: torch.device) -> Iterator[None]:
    """Float32 math in full precision on ``device`` while the block runs (CUDA's settings restored after).

    cuDNN runs float32 convolutions in TF32 by default (a 10-bit mantissa: ~1e-3 relative error per product), and
    may do so for matrix products: enough to move a converged solve and to make an edit on CUDA differ from the
    same edit on the CPU by more than 1e-3. The settings are the process's, hence restored."""
    if device.type != "cuda":
        yield
        return
    # The allow_tf32 switches, not the fp32_precision ones: they set cuDNN's convolutions and RNNs together, and once
    # the two differ (the newer switches set one at a time) reading allow_tf32 raises, in torch and in libraries.
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def visible_cuda_devices() -> int:
    """How many CUDA devices this process can use (0 without a driver)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def tensor_device(device: torch.device) -> torch.device:
    """Where the engine's tensors for ``device`` live: the device itself (the CPU tests' CUDA double maps it to the
    CPU, which is why the engine places its model through this function)."""
    return device


def open_device(device: torch.device) -> None:
    """Make ``device`` this process's current device and create its CUDA context and caching allocator, so that
    memory statistics and kernels may follow (a no-op on the CPU). Idempotent."""
    if device.type != "cuda":
        return
    index = _cuda_index(device)
    if (os.getpid(), index) in _opened:
        return
    torch.cuda.set_device(index)
    torch.cuda.init()
    torch.empty(1, device=tensor_device(device))  # the first allocation: the caching allocator is live from here
    _opened.add((os.getpid(), index))


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def release_cached_memory(device: torch.device) -> None:
    """Return CUDA's cached, unused blocks to the driver (after an out-of-memory error, before a retry)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # a no-op before CUDA's allocator exists


def is_device_failure(exc: BaseException) -> bool:
    """A CUDA error (not one of the job's inputs): the device may be unusable for the rest of this process."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and ("CUDA error" in str(exc) or "CUBLAS_STATUS" in str(exc))


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a wall-clock time covers the work (a no-op on the CPU)."""
    if device.type == "cuda":
        open_device(device)
        torch.cuda.synchronize(_cuda_index(device))


def _cgroup_headroom_bytes() -> int | None:
    """Memory the cgroup (v2) of this process may still take, when it has a limit."""
    try:
        limit = (CGROUP_ROOT / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((CGROUP_ROOT / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def _proc_field(path: str, key: str) -> str | None:
    """The value after ``key:`` in a Linux /proc text file, or None where there is none."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return None


def _proc_bytes(path: str, key: str) -> int | None:
    """A /proc field given in kB (``MemAvailable``, ``VmHWM``…), in bytes."""
    value = _proc_field(path, key)
    return int(value.split()[0]) * 1024 if value else None


def _meminfo_available_bytes() -> int | None:
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` now: CUDA's free memory, or on the CPU the least of the host's available
    memory and the cgroup's headroom; None when it cannot be told."""
    if device.type == "cuda":
        open_device(device)
        return int(torch.cuda.mem_get_info(_cuda_index(device))[0])
    known = [b for b in (_meminfo_available_bytes(), _cgroup_headroom_bytes()) if b is not None]
    return max(min(known), 0) if known else None


def reset_peak_memory(device: torch.device) -> None:
    """Start counting peak memory from now (CUDA's allocator, opened first; on Linux the process's peak resident
    set)."""
    if device.type == "cuda":
        open_device(device)
        torch.cuda.reset_peak_memory_stats(_cuda_index(device))
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set size


def _peak_resident_bytes() -> int:
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _cpu_name() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def device_report(device: torch.device) -> dict[str, Any]:
    """The result's ``device`` entry: type, index, name, total and peak memory (bytes) since the last reset.

    On CUDA the peak is what the allocator held for tensors; on the CPU it is the process's peak resident set
    (the job's process runs one job, so that is the job's, model and data included)."""
    if device.type == "cuda":
        open_device(device)
        index = _cuda_index(device)
        properties = torch.cuda.get_device_properties(index)
        return {
            "type": "cuda",
            "index": index,
            "name": properties.name,
            "total_memory_bytes": properties.total_memory,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(index)),
        }
    return {
        "type": device.type,
        "index": None,
        "name": _cpu_name(),
        "total_memory_bytes": _meminfo_total_bytes(),
        "peak_memory_bytes": _peak_resident_bytes(),
    }


def _meminfo_total_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
