"""What the service and worker tests share: the users' client (``gif_client.Client``) with the suite's defaults,
a listing of what an artifact store holds, and headless chromium (Debian's; the tests that need it are skipped
where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import pytest
from gif_client import Client
from gif_client.client import TERMINAL
from gif_client.problems import raise_for_problem

from gif.demo import upload_demo
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
