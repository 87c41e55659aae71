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
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field

from service.core.records import Keys, utc_now

WorkerState = Literal["warming", "idle", "running", "unhealthy"]
HEALTHY: frozenset[str] = frozenset({"warming", "idle", "running"})
log = logging.getLogger("service.core.fleet")


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
    """The records of live workers, under ``<prefix>:worker:<name>`` (expiring after ``ttl_s`` without a beat),
    indexed by a sorted set of names scored by expiry time: listing costs the workers, not the whole key space
    (``/readyz`` and every submit list them)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float):
        self.client, self.keys, self.ttl_s = client, keys, ttl_s

    def _key(self, name: str) -> str:
        return self.keys.item("worker", name)

    @property
    def _index(self) -> str:
        return self.keys.item("workers", "live")

    def publish(self, info: WorkerInfo) -> None:
        info.updated_at = utc_now()
        with self.client.pipeline() as pipe:
            pipe.set(self._key(info.name), info.model_dump_json(), px=int(self.ttl_s * 1000))
            pipe.zadd(self._index, {info.name: time.time() + self.ttl_s})
            pipe.execute()

    def publish_until(self, stopped: threading.Event, current: Callable[[], WorkerInfo], interval_s: float) -> None:
        """Rewrite ``current()`` every ``interval_s`` until ``stopped`` (the whole record, not just its expiry: a Redis
        that restarted empty has it back at once, and a beat that raced a change of state is put right by the
        next), then withdraw it."""
        while not stopped.wait(interval_s):
            try:
                self.publish(current())
            except redis.RedisError as exc:  # Redis may come back; the thread must not end
                log.warning("could not publish this worker's state: %s", exc)
        self.withdraw(current().name)

    def withdraw(self, name: str) -> None:
        with self.client.pipeline() as pipe:
            pipe.delete(self._key(name))
            pipe.zrem(self._index, name)
            pipe.execute()

    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        """Every live worker (on ``queue`` only, when given), by name."""
        self.client.zremrangebyscore(self._index, "-inf", time.time())
        names = cast(list[str], self.client.zrange(self._index, 0, -1))
        rows = cast(list[str | None], self.client.mget([self._key(n) for n in names])) if names else []
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
