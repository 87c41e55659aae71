"""Puts the CUDA double (``gif_cuda_double``) into every Python process started with this folder on PYTHONPATH and
``GIF_TEST_CUDA_DOUBLE`` set: the worker's supervisor, RQ worker and job processes in the CPU tests.

It is installed right after ``torch`` is imported, never before: processes that never import torch (the supervisor
and the RQ worker) must stay free of it, and a test asserts that they do.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

from gif_cuda_double import STATE_ENV, CudaDouble


class _InstallAfterTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            double = CudaDouble.from_environment()
            if double is not None:
                double.install()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get(STATE_ENV):
    sys.meta_path.insert(0, _InstallAfterTorch())
