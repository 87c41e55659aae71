"""What the service and worker tests share: the users' client (``gif_client.Client``) with the suite's defaults,
and a listing of what an artifact store holds."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

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
