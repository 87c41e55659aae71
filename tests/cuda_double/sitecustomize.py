"""Puts the CUDA double (``gif_cuda_double``) into every Python process started with this folder on PYTHONPATH and
``GIF_TEST_CUDA_DOUBLE`` set: the worker's supervisor, RQ worker and job processes in the CPU tests.

It is installed right after ``torch`` is imported, never before: processes that never import torch (the supervisor
and the RQ worker) must stay free of it, and a test asserts that they do.
"""

from __future__ import annotations

from gif_cuda_double import CudaDouble

CudaDouble.install_from_environment()
