"""``Client``: uploads (streamed, sha256 checked), jobs (idempotent submit, wait with a progress bar, cancel),
downloads (ETag checked) and paginated lists, over the service's HTTP API."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from gif_client.problems import raise_for_problem

TERMINAL = ("succeeded", "failed", "cancelled")
CHUNK_BYTES = 1 << 20
DIRECT_UPLOAD_THRESHOLD_BYTES = 256 * 1024**2
DIRECT_UPLOAD_ATTEMPTS = 5


class IntegrityError(Exception):
    """Bytes changed on the way: the sha256 computed here differs from the one the service reports."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class UploadError(Exception):
    """A local file or folder that cannot be sent as it is; the message says why."""


def uploaded_sha256(record: dict[str, Any]) -> str:
    """The sha256 of the file that was sent (an image archive is stored converted, under another sha256)."""
    sent: str = record.get("source_sha256") or record["sha256"]
    return sent


@contextmanager
def as_uploadable(path: str | Path) -> Iterator[Path]:
    """``path`` itself; for a folder of WebDataset shards (nothing but ``.tar`` files), one tar of their samples;
    for any other folder, a zip of it (entries in sorted order, fixed timestamps). Both are made in a scratch
    directory, and the same folder always gives the same bytes (so ``upload_once`` finds it again)."""
    path = Path(path)
    if not path.is_dir():
        yield path
        return
    files = sorted(path.rglob("*"))
    for file in files:
        if file.is_symlink() or not (file.is_file() or file.is_dir()):
            raise UploadError(f"{file}: links and special files cannot be uploaded")
    shards = [f for f in files if f.is_file()]
    with tempfile.TemporaryDirectory() as scratch:
        if shards and all(f.suffix == ".tar" and f.parent == path for f in files):
            archive = Path(scratch) / f"{path.name or 'shards'}.tar"
            _join_shards(shards, archive)
        else:
            archive = Path(scratch) / f"{path.name or 'images'}.zip"
            _zip_folder(path, files, archive)
        yield archive


def _zip_folder(folder: Path, files: list[Path], archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for file in files:
            name = file.relative_to(folder).as_posix() + ("/" if file.is_dir() else "")
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            if file.is_dir():
                zf.writestr(entry, b"")
                continue
            with open(file, "rb") as source, zf.open(entry, "w") as target:
                shutil.copyfileobj(source, target, CHUNK_BYTES)


def _join_shards(shards: list[Path], archive: Path) -> None:
    """The shards' members, in order, in one tar: copied header by header (nothing extracted; the service checks
    every member, and refuses a key found in two shards)."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as joined:
        for shard in shards:
            try:
                with tarfile.open(shard, "r:") as source:
                    for member in source:
                        joined.addfile(member, source.extractfile(member) if member.isfile() else None)
            except tarfile.TarError as exc:
                raise UploadError(f"{shard}: not a readable tar ({exc})") from None


class Client:
    """The GIF service at ``base_url``; ``api_key`` when the service requires one (``GIF_API_KEYS``).

    ``http`` replaces the underlying ``httpx.Client`` (tests pass FastAPI's TestClient)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        http: httpx.Client | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout_s)
        self.http.headers.update(headers)
        self.bucket = httpx.Client(timeout=timeout_s)  # presigned part URLs: straight to S3, no API key sent there

    def close(self) -> None:
        self.http.close()
        self.bucket.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        raise_for_problem(response)
        return response.json()

    # --- uploads ---------------------------------------------------------------------------------------

    def upload_model(
        self,
        path: str | Path,
        architecture: dict[str, Any] | None = None,
        input_transform: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Weights with their architecture (``{"name": …, "config": {…}}``), or a ``.pt2`` program (none);
        ``input_transform``: the preprocessing it was trained with (``{"resize", "crop", "mean", "std", "channels"}``),
        which the service applies to the data of its jobs."""
        data = {"architecture": json.dumps(architecture)} if architecture is not None else {}
        if input_transform is not None:
            data["input"] = json.dumps(input_transform)
        return self._upload("models", path, data)

    def upload_dataset(
        self, path: str | Path, classes: list[str] | None = None, direct: bool | None = None
    ) -> dict[str, Any]:
        """Tensors (``.safetensors`` or ``.npz`` holding ``x``, ``y`` and optionally ``ids``), an image archive
        (ImageFolder ``.zip``/``.tar``/``.tar.gz``, or a WebDataset ``.tar``), or a folder of class folders (zipped
        on the way); ``classes``: an image archive's class names in label order.

        ``direct``: send the file straight to the service's S3 bucket by presigned multipart URLs (resumed after a
        dropped connection), True always, False never; unset: for files of ``DIRECT_UPLOAD_THRESHOLD_BYTES`` or more
        where the service offers it, else through the API."""
        data = {"classes": json.dumps(classes)} if classes is not None else {}
        with as_uploadable(path) as file:
            if direct or (direct is None and file.stat().st_size >= DIRECT_UPLOAD_THRESHOLD_BYTES):
                record = self._upload_direct(file, classes, required=bool(direct))
                if record is not None:
                    return record
            return self._upload("datasets", file, data)

    def register_dataset(self, url: str, classes: list[str] | None = None) -> dict[str, Any]:
        """Register a dataset already in S3 by its URL (``s3://bucket/key``, or ``s3://bucket/prefix/`` of WebDataset
        shards) where the service allows that location; it is checked and stored as an uploaded file would be."""
        body: dict[str, Any] = {"url": url, **({"classes": classes} if classes is not None else {})}
        return self._json(self.http.post("/v1/datasets", json=body))

    def _upload_direct(self, path: Path, classes: list[str] | None, required: bool) -> dict[str, Any] | None:
        """The presigned multipart upload of ``path``; None where the service has none and it was not required."""
        expected = sha256_of(path)
        body: dict[str, Any] = {"size_bytes": path.stat().st_size, "filename": path.name}
        if classes is not None:
            body["classes"] = classes
        response = self.http.post("/v1/dataset-uploads", json=body)
        if response.status_code in (404, 405, 409) and not required:
            return None  # a local store (409), or a service from before presigned uploads
        record = self.resume_upload(self._json(response)["id"], path)
        if uploaded_sha256(record) != expected:
            raise IntegrityError(f"{path}: sent sha256 {expected}, the service received {uploaded_sha256(record)}")
        return record

    def resume_upload(self, upload_id: str, path: str | Path) -> dict[str, Any]:
        """Send the parts of ``path`` that S3 does not hold yet for the presigned upload ``upload_id``, then complete
        it: the dataset's record. After a dropped connection each part still missing is sent again (the service
        asks S3 which it holds), up to ``DIRECT_UPLOAD_ATTEMPTS`` rounds; calling this again later resumes too."""
        for attempt in range(DIRECT_UPLOAD_ATTEMPTS):
            state = self._json(self.http.get(f"/v1/dataset-uploads/{upload_id}"))
            try:
                self._send_parts(Path(path), state)
                break
            except (httpx.TransportError, httpx.HTTPStatusError):
                if attempt == DIRECT_UPLOAD_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
        return self._json(self.http.post(f"/v1/dataset-uploads/{upload_id}/complete"))

    def _send_parts(self, path: Path, state: dict[str, Any]) -> None:
        """PUT each missing part (one part in memory at a time) to its presigned URL; 5xx raise to be retried."""
        part_bytes = int(state["part_size_bytes"])
        with open(path, "rb") as fh:
            for part in state["parts"]:
                fh.seek((int(part["number"]) - 1) * part_bytes)
                response = self.bucket.put(part["url"], content=fh.read(part_bytes))
                if response.status_code >= 500:
                    response.raise_for_status()
                if not response.is_success:
                    raise UploadError(f"S3 refused part {part['number']}: {response.status_code} {response.text[:300]}")

    def _upload(self, collection: str, path: str | Path, data: dict[str, str]) -> dict[str, Any]:
        expected = sha256_of(path)
        with open(path, "rb") as fh:  # httpx streams the open file; it is never read whole here
            record = self._json(self.http.post(f"/v1/{collection}", files={"file": (Path(path).name, fh)}, data=data))
        if uploaded_sha256(record) != expected:
            raise IntegrityError(f"{path}: sent sha256 {expected}, the service received {uploaded_sha256(record)}")
        return record

    def find_upload(self, collection: str, sha256: str) -> dict[str, Any] | None:
        """Your upload in ``collection`` (``models`` or ``datasets``) of a file with this sha256, if there is one."""
        return next((item for item in self.list(collection) if uploaded_sha256(item) == sha256), None)

    def upload_once(
        self,
        collection: str,
        path: str | Path,
        architecture: dict[str, Any] | None = None,
        input_transform: dict[str, Any] | None = None,
    ) -> dict:
        """The upload of ``path`` you already have (same sha256, same architecture and input transform), else a new
        upload."""
        with as_uploadable(path) as file:
            found = self.find_upload(collection, sha256_of(file))
            if found is not None and (
                collection == "datasets"
                or (
                    architecture in (None, found.get("architecture"))
                    and input_transform == found.get("input_transform")
                )
            ):
                return found
            if collection == "models":
                return self.upload_model(file, architecture, input_transform)
            return self.upload_dataset(file)

    # --- lists -----------------------------------------------------------------------------------------

    def list(self, collection: str, page_size: int = 200, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of ``/v1/<collection>`` (``models``, ``datasets``, ``jobs``, ``architectures``), page by page."""
        cursor = None
        while True:
            query = {**params, "limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self._json(self.http.get(f"/v1/{collection}", params=query))
            yield from page["items"]
            if (cursor := page["next_cursor"]) is None:
                return

    # --- jobs ------------------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a job; retried on connection errors with one ``Idempotency-Key``, so a retry never makes two."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        for attempt in range(3):
            try:
                return self._json(self.http.post("/v1/jobs", json=spec, headers=headers))
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/jobs/{job_id}/cancel"))

    def workers(self) -> dict[str, Any]:
        """The fleet: ``{"workers": [...], "healthy": bool, "reason": str | None}`` (``GET /v1/workers``)."""
        return self._json(self.http.get("/v1/workers"))

    def usage(self) -> dict[str, Any]:
        """This key's usage and limits: active jobs, stored bytes, submits per minute (``GET /v1/usage``)."""
        return self._json(self.http.get("/v1/usage"))

    def wait(
        self,
        job_id: str,
        progress: bool | IO[str] = True,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
        until: Collection[str] = TERMINAL,
    ) -> dict[str, Any]:
        """Poll until the job ends (or reaches a status in ``until``); with ``progress`` a one-line bar (phase,
        solver iteration, residual) on stderr (or the given stream). Returns the job; ``TimeoutError`` past
        ``timeout_s``."""
        stream = sys.stderr if progress is True else (progress or None)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if stream is not None:
                stream.write("\r" + progress_line(job).ljust(100))
                stream.flush()
            if job["status"] in until or job["status"] in TERMINAL:
                if stream is not None:
                    stream.write("\n")
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def report(self, job_id: str, path: str | Path) -> Path:
        """Write the job's report (one self-contained HTML page) to ``path``; the job must have succeeded."""
        response = self.http.get(f"/v1/jobs/{job_id}/report")
        raise_for_problem(response)
        path = Path(path)
        path.write_text(response.text, encoding="utf-8")
        return path

    def download(
        self, job_id: str, path: str | Path, file_format: str = "safetensors", method: str | None = None
    ) -> Path:
        """Stream the edited checkpoint (``safetensors``, or ``pt2`` for a program) to ``path``, its sha256 checked
        against the ETag; nothing is left at ``path`` if it does not match. A job that compared several methods:
        the chosen one's, or ``method``'s."""
        path = Path(path)
        partial = path.with_name(path.name + ".part")
        digest = hashlib.sha256()
        params = {"format": file_format, **({"method": method} if method is not None else {})}
        with self.http.stream("GET", f"/v1/jobs/{job_id}/checkpoint", params=params) as response:
            if not response.is_success:
                response.read()
                raise_for_problem(response)
            expected = response.headers.get("etag", "").strip('"')
            with open(partial, "wb") as fh:
                for block in response.iter_bytes(CHUNK_BYTES):
                    digest.update(block)
                    fh.write(block)
        if expected and digest.hexdigest() != expected:
            partial.unlink()
            raise IntegrityError(f"downloaded sha256 {digest.hexdigest()} != ETag {expected}")
        partial.replace(path)
        return path


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    """``[#####.....]  42% solve  it 12  residual 3.1e-02  running`` from a job resource."""
    progress = job.get("progress") or {}
    fraction = 1.0 if job["status"] == "succeeded" else float(progress.get("fraction") or 0.0)
    bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
    parts = [f"[{bar}] {fraction:4.0%}", str(progress.get("phase") or "")]
    if progress.get("iteration") is not None:
        parts.append(f"it {progress['iteration']}")
    if progress.get("relative_residual") is not None:
        parts.append(f"residual {progress['relative_residual']:.1e}")
    parts.append(job["status"])
    return "  ".join(p for p in parts if p)
