"""Every setting of the API and the worker, in one place (environment variables prefixed ``GIF_``).

Both processes read the same ``Settings``: the worker needs the Redis URL, the key prefix, the
storage directory and the heartbeat and timeout windows exactly as the API sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GIF_", validate_by_name=True, frozen=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("GIF_REDIS_URL", "REDIS_URL"),
        description="Redis holding job records, the queue and the artifact index (GIF_REDIS_URL or REDIS_URL).",
    )
    key_prefix: str = Field(
        "gif", pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of every Redis key this service writes."
    )
    queue_name: str = Field("gif-edits", pattern=r"^[A-Za-z0-9_.-]+$")
    storage_dir: Path = Field(
        Path("var/artifacts"),
        description="The local artifact store; with an S3 store, this host's staging files and read cache.",
    )
    storage_url: str | None = Field(
        None,
        description="Where artifacts live: file:///path (a local directory), or s3://bucket/prefix (shared by every "
        "host; credentials from the standard AWS variables). Unset: the local directory GIF_STORAGE_DIR.",
    )
    s3_endpoint_url: str | None = Field(None, description="An S3-compatible server (MinIO, SeaweedFS…); unset: AWS.")
    s3_presign_expiry_s: int | None = Field(
        None, ge=1, description="S3: checkpoint downloads redirect to a URL presigned for this long; unset: streamed."
    )
    storage_cache_bytes: int = Field(
        20 * 1024**3, ge=0, description="S3: the most bytes each host keeps in its read cache (least recently used go)."
    )
    s3_connect_timeout_s: float = Field(
        5.0, gt=0, description="S3: the longest one attempt to connect to the server may take."
    )
    s3_retries: int = Field(
        5,
        ge=0,
        description="S3: times a request is retried (with backoff) when the server cannot be reached or fails, before "
        "the store reports it unavailable: a 503 for a request, a retryable failure for a job.",
    )
    data_url_allowed: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="S3 store only: comma-separated s3://bucket/prefix locations whose objects POST /v1/datasets may "
        'register by reference ({"url": "s3://bucket/key"}); a URL outside all of them is refused (422), and so is '
        "every URL while this is empty. The objects are read with the store's credentials and endpoint.",
    )
    direct_upload_part_bytes: int = Field(
        64 * 1024**2,
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="S3 store only: the part size of a presigned multipart dataset upload (S3 takes 5 MiB to 5 GiB).",
    )
    direct_upload_expiry_s: int = Field(
        24 * 3600,
        ge=60,
        description="S3 store only: how long the part URLs of a presigned dataset upload, and the upload, stay valid.",
    )
    min_free_bytes: int = Field(
        0,
        ge=0,
        description="Free bytes the store's disk (for S3: this host's staging and cache directory) must keep: an "
        "upload that would leave less is refused up front with 507 storage-full, a job fails storage-full before "
        "writing its checkpoint, and /readyz reports the shortfall; 0: no check.",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer keys; empty means no authentication."
    )
    max_upload_bytes: int = Field(4 * 1024**3, ge=1, description="Largest request body on the upload routes.")
    max_json_bytes: int = Field(16 * 1024**2, ge=1, description="Largest request body on every other route.")
    request_head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection that has not sent a complete request head this long after it opened (or after its "
        "last response) is closed.",
    )
    keep_alive_timeout_s: int = Field(5, ge=1, description="An idle keep-alive connection is closed after this long.")
    max_connections: int = Field(
        1000, ge=1, description="Open connections (and requests in progress) past which the API answers 503 at once."
    )
    body_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for the next part of a request body; once this long has been spent waiting, the "
        "body must also have come at GIF_BODY_MIN_BYTES_PER_S on average (408 otherwise).",
    )
    body_min_bytes_per_s: float = Field(
        1024.0, ge=0, description="Slowest average pace of a request body that is still accepted (see above)."
    )
    max_dataset_bytes: int = Field(
        8 * 1024**3, ge=1, description="Largest dataset once decompressed (an .npz declares it before it is read)."
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="Largest image of an uploaded image dataset, checked before it is decoded."
    )
    max_model_bytes: int = Field(
        8 * 1024**3, ge=1, description="Largest model once decompressed (torch zip and .pt2 archives declare it)."
    )

    quota_active_jobs: int | None = Field(
        None, ge=1, description="Most jobs one key may have queued or running at once (409 past it); unset: no limit."
    )
    quota_stored_bytes: int | None = Field(
        None,
        ge=1,
        description="Most bytes of models and datasets (edited models included) one key may store (403 past it); "
        "unset: no limit.",
    )
    quota_submits_per_minute: int | None = Field(
        None,
        ge=1,
        description="Jobs one key may submit per minute, as a token bucket shared by every API process (that many "
        "at once, refilled at that rate; 429 with Retry-After past it); unset: no limit.",
    )
    quota_requests_per_second: int | None = Field(
        None,
        ge=1,
        description="Requests one key may make per second on the /v1 routes, as a token bucket shared by every API "
        "process (429 with Retry-After past it); unset: no limit.",
    )

    retention_jobs_s: float | None = Field(
        None,
        gt=0,
        description="Finished jobs (succeeded, failed, cancelled) are deleted this long after they finished, with "
        "what only they hold (their checkpoints; an edited model registered from a job stays); unset: kept.",
    )
    retention_uploads_s: float | None = Field(
        None,
        gt=0,
        description="Uploaded models and datasets no job has named for this long are deleted (never one a queued or "
        "running job uses; never an edited model a job registered); unset: kept.",
    )
    retention_batch: int = Field(
        100, ge=1, description="Most jobs, and most uploads, retention removes in one reaper pass (oldest first)."
    )

    webhook_secret: str | None = Field(
        None, description="Signs job notifications (Standard Webhooks); unset: jobs cannot ask for notify."
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated host names job notifications may be sent to."
    )
    idempotency_ttl_s: int = Field(
        24 * 3600, ge=1, description="How long an Idempotency-Key of POST /v1/jobs keeps naming its job."
    )
    job_timeout_s: int = Field(6 * 3600, ge=1, description="A running job is stopped and failed after this long.")
    heartbeat_ttl_s: float = Field(15.0, gt=0, description="A running job whose worker stays silent this long is lost.")
    reaper_interval_s: float = Field(
        10.0, gt=0, description="How often the API and each worker host look for lost jobs."
    )
    cancel_check_interval_s: float = Field(0.2, gt=0, description="How often a running job looks for a cancel request.")
    progress_interval_s: float = Field(0.5, ge=0, description="Least time between two progress writes of a job.")

    worker_device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda|cuda:[0-9]+)$",
        description="Where jobs run: auto (one worker per visible GPU, else the CPU), cpu, cuda (every GPU) or cuda:N.",
    )
    job_max_attempts: int = Field(
        3,
        ge=1,
        description="Times a job is taken by a worker whose process then dies (before or while running it) "
        "before it is failed with the cause; a job that fails on its own is never retried.",
    )
    worker_warmup_attempts: int = Field(
        3,
        ge=1,
        description="Job processes in a row that may fail their warm-up before the worker marks its device "
        "unhealthy (it then takes no job, and tries again after GIF_WORKER_UNHEALTHY_RETRY_S).",
    )
    worker_warmup_timeout_s: float = Field(
        300.0, gt=0, description="Longest a job process may take to load the engine and warm up on its device."
    )
    worker_unhealthy_retry_s: float = Field(
        30.0,
        gt=0,
        description="First wait of an unhealthy worker before it tries its device again (doubling, up to "
        "ten times as long).",
    )
    worker_torch_threads: int | None = Field(
        None, ge=1, description="torch threads per job; unset: every core it may run on."
    )
    api_torch_threads: int = Field(1, ge=1, description="torch threads in the API (dataset checks only).")
    log_level: str = "INFO"

    @field_validator("api_keys", "webhook_allowed_hosts", "data_url_allowed", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        url = urlparse(value)
        if url.scheme == "s3" and url.netloc:
            return value
        if url.scheme == "file" and url.path and not url.netloc:
            return value
        raise ValueError("expected file:///absolute/path or s3://bucket[/prefix]")

    @field_validator("data_url_allowed")
    @classmethod
    def _data_url_allowed(cls, value: list[str]) -> list[str]:
        for location in value:
            url = urlparse(location)
            if url.scheme != "s3" or not url.netloc or url.query or url.fragment:
                raise ValueError(f"{location!r}: expected s3://bucket[/prefix]")
        return value

    @property
    def heartbeat_interval_s(self) -> float:
        """Refresh a job's heartbeat three times per TTL, so one late beat does not lose the job."""
        return self.heartbeat_ttl_s / 3

    def as_env(self) -> dict[str, str]:
        """These settings as ``GIF_*`` environment variables, to hand to a child process (a worker, the API)."""
        return {
            f"GIF_{name.upper()}": ",".join(value) if isinstance(value, list) else str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }
