"""What the tests share: the users' client (``gif_client.Client``) with the suite's defaults, a listing of what an
artifact store holds, headless chromium (Debian's; the tests that need it are skipped where it is not installed),
and what makes two edits the same edit (on two devices, or summed in two orders)."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from gif_client import Client
from gif_client.client import TERMINAL
from gif_client.problems import raise_for_problem

from bench.stack import upload_demo
from service.core.settings import Settings
from service.core.storage import artifact_store


class SuiteClient(Client):
    """``Client`` that polls quickly, draws no progress bar and gives up after two minutes, so that a stuck job
    fails its test instead of hanging the suite."""

    def wait(
        self,
        job_id: str,
        progress: bool | IO[str] = False,
        poll_s: float = 0.05,
        timeout_s: float | None = 120.0,
        until: Collection[str] = TERMINAL,
    ) -> dict[str, Any]:
        return super().wait(job_id, progress, poll_s, timeout_s, until)

    def upload_demo(self, directory: str | Path) -> dict[str, str]:
        return upload_demo(self, directory)

    def checkpoint(self, job_id: str) -> bytes:
        """The edited weights' bytes, in memory (the tests' checkpoints are small)."""
        response = self.http.get(f"/v1/jobs/{job_id}/checkpoint")
        raise_for_problem(response)
        return response.content


def stored_files(settings: Settings) -> set[str]:
    """Every file the artifact store of ``settings`` holds: its blobs (on disk or in S3) and any staging files."""
    on_disk = {p.name for p in settings.storage_dir.rglob("*") if p.is_file()}
    return on_disk | artifact_store(settings).names()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)")


def headless_chromium(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Load ``url`` in headless chromium with a fresh profile in ``profile`` and these extra ``flags``
    (``--screenshot=…``, ``--dump-dom``: the page's DOM on stdout…); its console messages go to stderr."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *flags, url]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def console_messages(run: subprocess.CompletedProcess[str]) -> list[str]:
    """The console messages a ``headless_chromium`` run logged."""
    return [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


def units_moved(state: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Per parameter, the rows (a layer's output units) with any entry changed: the selected units."""
    return {
        name: torch.nonzero((state[name] != value).reshape(len(value), -1).any(1)).flatten().tolist()
        for name, value in original.items()
        if value.dim()
    }


def assert_the_same_edit(
    edits: dict[str, dict[str, torch.Tensor]], original: dict[str, torch.Tensor], tolerance: float = 1e-3
) -> None:
    """The same units moved, and the same entries up to float32 rounding: an update within one ulp of its weight,
    which θ + Δ keeps on one device and rounds away on the other (two CPU runs summing in other orders differ so),
    may move on one side only; and the updates agree within ``tolerance`` relative."""
    first, second = edits.values()
    assert units_moved(first, original) == units_moved(second, original)
    theta = torch.cat([v.flatten() for v in original.values()])
    one_ulp = (torch.nextafter(theta.abs(), torch.tensor(math.inf)) - theta.abs()).double()
    delta = [torch.cat([(edit[k] - v).flatten().double() for k, v in original.items()]) for edit in edits.values()]
    moved_on_one_side = (delta[0] != 0) != (delta[1] != 0)
    assert bool((torch.maximum(delta[0].abs(), delta[1].abs()) <= one_ulp)[moved_on_one_side].all())
    assert (delta[1] - delta[0]).norm() <= tolerance * delta[0].norm()
