"""A double of ``torch.cuda`` for machines without a GPU, which keeps the rules real hardware enforced.

Every job on an H200 once failed on a call that no CPU test could catch; this double makes the CPU tests run the
engine and the worker as if a GPU were there, and refuses what a real GPU refuses:

- memory statistics before the process has a CUDA context and caching allocator: ``reset_peak_memory_stats``
  raises ``RuntimeError: Invalid device argument`` (``max_memory_allocated`` reads 0), as in a fresh process;
- CUDA in a process forked (``os.fork``) after torch was imported: ``CUDA error: initialization error``;
- out of memory on request: with ``mode="exclusive"`` a second live process that creates a context while another
  holds one gets ``CUDA error: out of memory`` (a running job held the whole GPU); with ``mode="broken"`` every
  context creation fails (a device that does not come up).

Contexts are recorded in ``state_dir`` (one file per live process, and an append-only ``events`` log), so that
processes of one test share one device. Tensors stay in host memory: ``gif.devices.tensor_device`` is mapped to
the CPU, so the engine computes on the CPU while every CUDA call goes through the double.

Installed in-process by ``CudaDouble(...).install()`` (a test fixture), and in the worker's processes by the
``sitecustomize`` beside this file when ``GIF_TEST_CUDA_DOUBLE`` names the state directory (after torch is
imported, so that processes that never import torch stay free of it).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_ENV = "GIF_TEST_CUDA_DOUBLE"
MODE_ENV = "GIF_TEST_CUDA_DOUBLE_MODE"
DEVICE_NAME = "CUDA test double"
TOTAL_MEMORY = 16 * 1024**3
CONTEXT_BYTES = 512 * 1024**2
ALLOCATION_BYTES = 4096


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, holds no device memory)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` once the module ``name`` has been imported (executed in full)."""

    def __init__(self, name: str, then: Callable[[types.ModuleType], None]):
        self.name, self.then = name, then

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            self.then(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def after_import(name: str, then: Callable[[types.ModuleType], None]) -> None:
    """``then(module)`` now if ``name`` is imported in full, else as soon as it is."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is not None and not getattr(spec, "_initializing", False):
        then(module)
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


class CudaDouble:
    """One simulated device shared by the processes that use ``state_dir``."""

    def __init__(self, state_dir: str | Path, mode: str = "", device_count: int = 1):
        self.state_dir = Path(state_dir)
        (self.state_dir / "contexts").mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.count = device_count
        self.context_pid: int | None = None  # the process whose context exists (a fork inherits the field)
        self.forked_after_torch = False
        self.current = 0
        self.saved: dict[str, Any] = {}

    # --- the rules ---------------------------------------------------------------------------

    def events(self) -> list[str]:
        """The event log: ``<pid> context`` or ``<pid> refused: <why>`` lines, in order."""
        path = self.state_dir / "events"
        return path.read_text().splitlines() if path.exists() else []

    def _log(self, line: str) -> None:
        with (self.state_dir / "events").open("a") as log:
            log.write(f"{os.getpid()} {line}\n")

    def _has_context(self) -> bool:
        return self.context_pid == os.getpid()

    def _create_context(self) -> None:
        if self._has_context():
            return
        if self.forked_after_torch:
            self._log("refused: forked after torch work")
            raise RuntimeError("CUDA error: initialization error")
        if self.mode == "broken":
            self._log("refused: broken device")
            raise RuntimeError("CUDA error: out of memory (the device did not come up)")
        holders = [int(p.name) for p in (self.state_dir / "contexts").iterdir() if _alive(int(p.name))]
        if self.mode == "exclusive" and any(pid != os.getpid() for pid in holders):
            self._log(f"refused: device held by {holders}")
            raise RuntimeError("CUDA error: out of memory")
        (self.state_dir / "contexts" / str(os.getpid())).touch()
        self.context_pid = os.getpid()
        self._log("context")

    def _check_index(self, device: Any) -> int:
        index = self._index(device)
        if not 0 <= index < self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def _index(self, device: Any) -> int:
        if device is None:
            return self.current
        if isinstance(device, int):
            return device
        if isinstance(device, str):
            device = __import__("torch").device(device)
        return device.index if device.index is not None else self.current

    # --- torch.cuda's functions, as the project calls them -----------------------------------

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self._has_context()

    def device_count(self) -> int:
        return self.count

    def init(self) -> None:
        self._create_context()

    def current_device(self) -> int:
        self._create_context()
        return self.current

    def set_device(self, device: Any) -> None:
        self.current = self._check_index(device)
        self._create_context()

    def synchronize(self, device: Any = None) -> None:
        self._check_index(device)
        self._create_context()

    def empty_cache(self) -> None:
        """Nothing is cached in host memory; like CUDA's, a no-op before the allocator exists."""

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        self._check_index(device)
        self._create_context()
        return TOTAL_MEMORY - CONTEXT_BYTES, TOTAL_MEMORY

    def get_device_properties(self, device: Any = None) -> Any:
        self._check_index(device)
        self._create_context()
        return types.SimpleNamespace(name=DEVICE_NAME, total_memory=TOTAL_MEMORY, major=9, minor=0)

    def get_device_name(self, device: Any = None) -> str:
        return str(self.get_device_properties(device).name)

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self._check_index(device)
        if not self._has_context():  # CUDA's allocator does not exist yet in this process
            raise RuntimeError("Invalid device argument")

    def max_memory_allocated(self, device: Any = None) -> int:
        self._check_index(device)
        return ALLOCATION_BYTES if self._has_context() else 0

    memory_allocated = max_memory_allocated

    # --- installing --------------------------------------------------------------------------

    FUNCTIONS = (
        "is_available",
        "is_initialized",
        "device_count",
        "init",
        "current_device",
        "set_device",
        "synchronize",
        "empty_cache",
        "mem_get_info",
        "get_device_properties",
        "get_device_name",
        "reset_peak_memory_stats",
        "max_memory_allocated",
        "memory_allocated",
    )

    def install(self) -> CudaDouble:
        """Replace ``torch.cuda``'s functions and ``gif.devices.tensor_device`` (restored by ``uninstall``)."""
        self.install_cuda()
        after_import("gif.devices", self.keep_tensors_on_the_host)
        return self

    def install_cuda(self) -> CudaDouble:
        import torch

        for name in self.FUNCTIONS:
            self.saved[name] = getattr(torch.cuda, name)
            setattr(torch.cuda, name, getattr(self, name))
        os.register_at_fork(after_in_child=self._forked)
        return self

    def keep_tensors_on_the_host(self, devices: types.ModuleType) -> None:
        """``gif.devices.tensor_device`` maps CUDA to the CPU (called once ``gif.devices`` is imported)."""
        if self.saved and hasattr(devices, "tensor_device"):
            import torch

            self.saved["tensor_device"] = devices.tensor_device
            devices.tensor_device = lambda device: torch.device("cpu")

    def uninstall(self) -> None:
        import torch

        import gif.devices

        if "tensor_device" in self.saved:
            gif.devices.tensor_device = self.saved.pop("tensor_device")
        for name, function in self.saved.items():
            setattr(torch.cuda, name, function)
        self.saved.clear()  # disarms the at-fork hook, which cannot be removed

    def _forked(self) -> None:
        if self.saved:  # installed: torch was imported before this fork
            self.forked_after_torch = True

    @classmethod
    def install_from_environment(cls) -> None:
        """In a process starting up (``sitecustomize``): installed once torch, then ``gif.devices``, are imported;
        ``gif.devices`` imports torch itself, so both hooks are set before either is imported."""
        if state := os.environ.get(STATE_ENV):
            double = cls(state, os.environ.get(MODE_ENV, ""))
            after_import("gif.devices", double.keep_tensors_on_the_host)
            after_import("torch", lambda _: double.install_cuda())
