"""A small Python client for the API, over any ``httpx.Client`` (a real one, or FastAPI's ``TestClient``).

The tests and the service benchmark drive the API through it; users may too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class ApiError(RuntimeError):
    """A response with an unexpected status; carries the response (a problem document, usually)."""

    def __init__(self, response: httpx.Response):
        super().__init__(
            f"{response.request.method} {response.request.url.path} → {response.status_code}: {response.text[:500]}"
        )
        self.response = response


class ApiClient:
    def __init__(self, http: httpx.Client):
        self.http = http

    def _expect(self, response: httpx.Response, status: int) -> dict[str, Any]:
        if response.status_code != status:
            raise ApiError(response)
        return response.json()

    def upload_model(self, path: str | Path, architecture: dict[str, Any] | None = None) -> dict[str, Any]:
        """Weights with their architecture, or a .pt2 program (no architecture)."""
        data = {"architecture": json.dumps(architecture)} if architecture is not None else {}
        with open(path, "rb") as fh:
            response = self.http.post("/v1/models", files={"file": (Path(path).name, fh)}, data=data)
        return self._expect(response, 201)

    def upload_dataset(self, path: str | Path) -> dict[str, Any]:
        with open(path, "rb") as fh:
            return self._expect(self.http.post("/v1/datasets", files={"file": (Path(path).name, fh)}), 201)

    def upload_demo(self, directory: str | Path) -> dict[str, str]:
        """Upload what ``gif demo-assets`` wrote; returns the ids as a job body names them."""
        directory = Path(directory)
        model = self.upload_model(
            directory / "model.safetensors", json.loads((directory / "architecture.json").read_text())
        )
        return {
            "model_id": model["id"],
            "train_dataset_id": self.upload_dataset(directory / "train.safetensors")["id"],
            "eval_dataset_id": self.upload_dataset(directory / "eval.safetensors")["id"],
        }

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._expect(self.http.post("/v1/jobs", json=spec), 202)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._expect(self.http.get(f"/v1/jobs/{job_id}"), 200)

    def wait(
        self,
        job_id: str,
        statuses: Iterable[str] = ("succeeded", "failed", "cancelled"),
        timeout_s: float = 120.0,
        interval_s: float = 0.05,
    ) -> dict[str, Any]:
        """Poll until the job has one of ``statuses``; TimeoutError past ``timeout_s``."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in wanted:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout_s} s: {job}")
            time.sleep(interval_s)

    def checkpoint(self, job_id: str) -> httpx.Response:
        response = self.http.get(f"/v1/jobs/{job_id}/checkpoint")
        if response.status_code != 200:
            raise ApiError(response)
        return response
