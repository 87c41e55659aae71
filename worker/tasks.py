"""One job, by id: load the record and inputs, run ``gif.edit.run``, store the checkpoint, complete the record.

This runs in a standby horse (``worker.horse``): a fresh interpreter per job, already warmed up on the
worker's device (``GIF_WORKER_DEVICE``), so CUDA is this process's own. While the job runs, a thread
refreshes its heartbeat; the engine's progress callback writes progress (throttled) and raises
``EditCancelled`` once it sees a cancel request. Every outcome ends the record: succeeded, failed (with a
typed error) or cancelled. A store without room for the checkpoint fails the job ``storage-full``, an S3 server
lost while inputs are fetched or outputs stored fails it ``service-unavailable`` (both retryable: the same job
succeeds once space is freed or the server is back), and what it had stored is released: a failed job leaves no
half of its outputs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import redis
import torch
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from gif.data import Dataset
from gif.devices import is_device_failure, resolve_device
from gif.edit import EditOutcome, run
from gif.errors import EditCancelled, GifError
from gif.io.datasets import read_dataset
from gif.models.checkpoints import load_checkpoint
from gif.models.registry import build_model, is_exported
from gif.result import CheckpointInfo
from gif.spec import JobSpec
from service.core.catalog import UploadRecord
from service.core.context import ServiceContext
from service.core.errors import job_error
from service.core.jobs import InputRef, JobRecord, JobStore
from service.core.logs import job_context
from service.core.settings import Settings
from service.core.storage.base import StorageFull, StoreUnavailable, is_storage_full
from service.core.storage.references import Artifacts
from service.core.webhooks import notify_end
from worker import context

log = logging.getLogger("worker.tasks")


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count where Linux says so)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Heartbeat:
    """A daemon thread that keeps the job's heartbeat key alive while the job runs."""

    def __init__(self, jobs: JobStore, job_id: str, interval_s: float):
        self.jobs, self.job_id, self.interval_s = jobs, job_id, interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.jobs.beat(self.job_id)
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc, extra={"job_id": self.job_id})

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


class JobProgress:
    """The engine's progress sink: throttled progress writes, and cancellation checks at most every few 100 ms."""

    def __init__(self, jobs: JobStore, job_id: str, settings: Settings):
        self.jobs, self.job_id = jobs, job_id
        self.write_every = settings.progress_interval_s
        self.check_every = settings.cancel_check_interval_s
        self.last_write = self.last_check = float("-inf")
        self.phase: str | None = None

    def __call__(
        self, phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
    ) -> None:
        now = time.monotonic()
        if now - self.last_check >= self.check_every:
            self.last_check = now
            if self.jobs.cancel_requested(self.job_id):
                raise EditCancelled("cancelled on request")
        if phase != self.phase or fraction >= 1.0 or now - self.last_write >= self.write_every:
            self.last_write, self.phase = now, phase
            self.jobs.report_progress(
                self.job_id,
                {
                    "phase": phase,
                    "fraction": round(fraction, 4),
                    "iteration": iteration,
                    "relative_residual": relative_residual,
                },
            )


def warm_up(device: str) -> None:
    """One tiny edit on the worker's device before any job, so that the engine's lazy imports, CUDA's context
    and its libraries are loaded while the worker is idle, not while a job waits."""
    generator = torch.Generator().manual_seed(0)
    model = build_model({"name": "mlp", "config": {"sizes": [4, 8, 3]}})
    data = Dataset(torch.randn(90, 4, generator=generator), torch.arange(90) % 3)
    spec = JobSpec.model_validate(
        {"request": {"kind": "remove_class", "classes": [0]}, "solver": {"max_iterations": 2}}
    )
    run(spec, model, data, data, device=resolve_device(device))


def run_job(job_id: str) -> None:
    """RQ's entry point: everything the worker needs is in the job record."""
    ctx = context()
    with job_context(job_id):
        current = get_current_job()
        worker = {"host": socket.gethostname(), "pid": os.getpid(), "name": current.worker_name if current else None}
        if not ctx.jobs.start(job_id, worker=worker):
            log.info("job is no longer queued; skipped")
            return
        log.info("job started")
        record = ctx.jobs.get(job_id)
        if record is None:
            log.info("job was deleted; skipped")
            return
        with Heartbeat(ctx.jobs, job_id, ctx.settings.heartbeat_interval_s):
            status = _execute(ctx, record)
        log.info("job %s", status)
        notify_end(ctx, job_id)  # here, not in a thread: this process ends with the job


def _execute(ctx: ServiceContext, record: JobRecord) -> str:
    """Run the edit and end the record; returns the final status."""
    job_id, jobs = record.id, ctx.jobs
    try:
        torch.set_num_threads(ctx.settings.worker_torch_threads or usable_cores())
        progress = JobProgress(jobs, job_id, ctx.settings)
        progress("starting", 0.0)
        spec = JobSpec.model_validate(record.spec)
        model, data = _load_inputs(ctx, record.inputs)
        outcome = run(
            spec,
            model,
            data["train"],
            data.get("eval"),
            progress,
            validation_data=data.get("validation"),
            attack_data=data.get("attack"),
            device=resolve_device(ctx.settings.worker_device),
            input_transform=record.inputs["model"].input_transform,
        )
        stored = _store_outputs(ctx, job_id, outcome, record.inputs["model"])
        edited = _register_edited_model(ctx, record, outcome)
        result = outcome.result.model_copy(update={"model_id": edited.id if edited is not None else None})
        if jobs.succeed(job_id, result):
            return "succeeded"
        if edited is not None:
            ctx.catalog.delete("model", edited.id, record.owner)
        for sha256 in stored:
            ctx.artifacts.release(sha256, f"job:{job_id}")
        return "abandoned: the job was ended elsewhere (lost or deleted) while it ran"
    except EditCancelled:
        error, status = job_error("cancelled", "cancelled on request while running"), "cancelled"
    except JobTimeoutException:
        error, status = job_error("timeout", f"the job ran longer than {ctx.settings.job_timeout_s} s"), "failed"
    except FileNotFoundError as exc:
        error, status = job_error("input-missing", f"an input file is missing: {exc.filename}"), "failed"
    except GifError as exc:
        error, status = job_error(exc.code, exc.detail, exc.problems), "failed"
    except StoreUnavailable as exc:
        log.warning("the artifact store is unavailable: %s", exc)
        detail = f"{exc}; nothing was kept: submit the job again once the store is back"
        error, status = job_error("service-unavailable", detail, retryable=True), "failed"
    except Exception as exc:
        if is_storage_full(exc):
            log.warning("no room for the job's outputs: %s", exc)
            error = job_error(
                "storage-full", f"{exc}; nothing was kept: submit the job again once space is freed", retryable=True
            )
        elif is_device_failure(exc):  # the device may be unusable for this process now; the next horse is fresh
            log.exception("the device failed")
            error = job_error("device-error", f"{type(exc).__name__}: {exc}; submit it again", retryable=True)
        else:
            log.exception("job crashed")
            error = job_error("internal", f"{type(exc).__name__}: {exc}")
        status = "failed"
    jobs.fail(job_id, error, status)
    return status


def _load_inputs(ctx: ServiceContext, inputs: dict[str, InputRef]) -> tuple[torch.nn.Module, dict[str, Dataset]]:
    model_input = inputs["model"]
    assert model_input.architecture is not None  # recorded with every model input
    model = load_checkpoint(model_input.architecture, ctx.artifacts.local_path(model_input.sha256))
    data = {
        role: read_dataset(ctx.artifacts.local_path(item.sha256)) for role, item in inputs.items() if role != "model"
    }
    return model, data


def _register_edited_model(ctx: ServiceContext, record: JobRecord, outcome: EditOutcome) -> UploadRecord | None:
    """The edited checkpoint as a model of the job's owner (the edited .pt2 for a program), so that it can be edited
    again; None when the model the job edited was deleted meanwhile (its facts are taken from it)."""
    model_input = record.inputs["model"]
    parent = ctx.catalog.get("model", model_input.id, record.owner)
    file_format: Literal["safetensors", "pt2"] = "pt2" if is_exported(model_input.architecture) else "safetensors"
    blob = outcome.result.output(file_format)
    if parent is None or blob is None:
        return None
    facts = {
        **parent.model_dump(
            include={"architecture", "num_parameters", "num_classes", "input_shape", "input_transform"}
        ),
        "sha256": blob.sha256,
        "size_bytes": blob.size_bytes,
        "format": file_format,
        "filename": f"{record.id}.{file_format}",
        "parent_model_id": parent.id,
        "job_id": record.id,
    }
    return ctx.catalog.register("model", record.owner, facts)


def _store_outputs(ctx: ServiceContext, job_id: str, outcome: EditOutcome, model: InputRef) -> list[str]:
    """Write the edited weights into the store (staged, then added under their sha256), as ``gif edit`` writes
    them, and for an exported program the edited ``.pt2`` too; a job of several methods writes every method's (the
    chosen one first). Returns the stored sha256s. Each write first needs room for the weights plus
    ``GIF_MIN_FREE_BYTES``; if any write or add fails, those stored already are released."""
    writers: list[Callable[[Path], CheckpointInfo]] = []
    exported = is_exported(model.architecture)
    for method in outcome.methods:
        writers.append(partial(outcome.write_checkpoint, method=method))
        if exported:
            original = ctx.artifacts.local_path(model.sha256)
            writers.append(partial(outcome.write_program, original, method=method))
    weight_bytes = sum(t.numel() * t.element_size() for t in outcome.state_dict.values())
    stored: list[str] = []
    try:
        for write in writers:
            ctx.artifacts.require_room(weight_bytes, ctx.settings.min_free_bytes, "the edited checkpoint")
            with ctx.artifacts.staging_file() as staged:
                info = _write(ctx.artifacts, write, staged, weight_bytes)
                if info.sha256 in stored:  # the same bytes twice (a compared method's): held once already
                    continue
                ctx.artifacts.add(staged, info.sha256, f"job:{job_id}")
                stored.append(info.sha256)
    except BaseException:
        for sha256 in stored:
            ctx.artifacts.release(sha256, f"job:{job_id}")
        raise
    return stored


def _write(
    artifacts: Artifacts, write: Callable[[Path], CheckpointInfo], staged: Path, weight_bytes: int
) -> CheckpointInfo:
    """Run a checkpoint writer; a failure with less room left on the disk than the weights take is a full disk.
    safetensors and torch.save report ENOSPC as errors of their own, with no errno ("os error 28", "unexpected
    pos"), and remove their partial file on the way out: the free space now is the space the write had."""
    try:
        return write(staged)
    except Exception as exc:
        if is_storage_full(exc) or (free := artifacts.free_bytes()) >= weight_bytes:
            raise
        raise StorageFull(
            f"writing the edited checkpoint ({weight_bytes} bytes of weights) failed with {free} bytes free on the "
            f"artifact store's disk ({type(exc).__name__}: {exc})"
        ) from exc
