"""The fleet: what each worker says about itself, so that users and probes can see who works and who cannot.

Each RQ worker (and a supervisor that cannot start one) keeps one record in Redis, rewritten on every change of
state and refreshed by a heartbeat; a record whose heartbeat stops expires, so the fleet lists live workers only.
States: ``warming`` (its next job process is loading the device), ``idle``, ``running`` (``job_id``), and
``unhealthy`` (``reason``: it takes no job; e.g. its job processes keep failing their warm-up, or its device
setting names a GPU this host does not have). ``/readyz`` is degraded when no worker on the API's queue is healthy,
and a job submitted then carries a warning.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field

from service.core.records import Keys, utc_now

WorkerState = Literal["warming", "idle", "running", "unhealthy"]
HEALTHY: frozenset[str] = frozenset({"warming", "idle", "running"})


class DeviceInfo(BaseModel):
    type: str = Field(description="cpu or cuda.")
    index: int | None = None
    name: str | None = Field(None, description="The GPU's model or the CPU's; known once a job process warmed up.")
    total_memory_bytes: int | None = None


class WorkerInfo(BaseModel):
    name: str
    host: str
    pid: int
    queue: str
    device: DeviceInfo
    state: WorkerState
    job_id: str | None = Field(None, description="The job it runs (state running).")
    reason: str | None = Field(None, description="Why it is unhealthy.")
    jobs_done: int = Field(0, description="Jobs its processes ran to an end (any status) since it started.")
    started_at: str
    updated_at: str


class Fleet:
    """The records of live workers, under ``<prefix>:worker:<name>`` (expiring after ``ttl_s`` without a beat)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float):
        self.client, self.keys, self.ttl_ms = client, keys, int(ttl_s * 1000)

    def _key(self, name: str) -> str:
        return self.keys.item("worker", name)

    def publish(self, info: WorkerInfo) -> None:
        info.updated_at = utc_now()
        self.client.set(self._key(info.name), info.model_dump_json(), px=self.ttl_ms)

    def withdraw(self, name: str) -> None:
        self.client.delete(self._key(name))

    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        """Every live worker (on ``queue`` only, when given), by name."""
        keys = sorted(cast(list[str], list(self.client.scan_iter(self._key("*"), count=500))))
        rows = cast(list[str | None], self.client.mget(keys)) if keys else []
        found = [WorkerInfo.model_validate(json.loads(row)) for row in rows if row]
        return [w for w in found if queue is None or w.queue == queue]

    def health(self, queue: str) -> str | None:
        """None when a healthy worker listens on ``queue``; else why jobs there will wait."""
        workers = self.workers(queue)
        if any(w.state in HEALTHY for w in workers):
            return None
        if not workers:
            return f"no worker listens on queue {queue!r}"
        reasons = "; ".join(f"{w.name}: {w.reason}" for w in workers)
        return f"no healthy worker listens on queue {queue!r} ({reasons})"


def new_worker_info(name: str, pid: int, queue: str, device: str, state: WorkerState = "warming") -> WorkerInfo:
    """A worker's first record; ``device`` is its ``GIF_WORKER_DEVICE`` value (``cpu``, ``cuda:N``)."""
    kind, _, index = device.partition(":")
    now = utc_now()
    return WorkerInfo(
        name=name,
        host=socket.gethostname(),
        pid=pid,
        queue=queue,
        device=DeviceInfo(type=kind, index=int(index) if index else None),
        state=state,
        started_at=now,
        updated_at=now,
    )


def device_info(report: dict[str, Any]) -> DeviceInfo:
    """The fleet's view of a job process's ``gif.devices.device_report``."""
    return DeviceInfo.model_validate({k: report.get(k) for k in DeviceInfo.model_fields})
