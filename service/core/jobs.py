"""Job records in Redis: the service's own, permanent view of every job (RQ's keys expire).

A record is a hash; every status change is one optimistic transaction (WATCH/MULTI) that moves
the job between the per-owner and per-status indexes, so the API, workers and the reaper can race
without losing or duplicating a transition. A running job is alive while its worker refreshes a
heartbeat key with a short TTL; ``reap_lost`` fails running jobs whose heartbeat has expired.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal, cast

import redis
import redis.asyncio
from pydantic import BaseModel, Field

from gif.result import EditResult
from service.core.errors import job_error
from service.core.quotas import active_jobs_exceeded
from service.core.records import Keys, OwnedRecord, is_id, new_id, page_ids, parse_time, utc_now
from service.core.storage.references import Artifacts

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
JSON_FIELDS = ("spec", "inputs", "progress", "result", "error", "worker", "warnings")
_PARSED_FIELDS = tuple(name for name in JSON_FIELDS if name != "result")  # json.loads; the result decodes as itself
DURATION_BUCKETS_S = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

# Progress is written only while the job still runs: a late write must not touch a finished
# (or deleted) record.
_WRITE_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
  return 1
end
return 0
"""

# Record a queued job unless its owner has ARGV[1] (> 0) jobs queued or running already: the check and the write are
# one step, so API processes racing for a key's last slot admit one job. Returns -1 when recorded, else the count.
_CREATE = """
local limit = tonumber(ARGV[1])
if limit > 0 then
  local active = redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[5])
  if active >= limit then
    return active
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
return -1
"""

_NOTE_ATTEMPT = """
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
return 0
"""


class InputRef(BaseModel):
    """One input of a job: the upload it came from and the blob that holds it (models: with their architecture)."""

    id: str
    sha256: str
    architecture: dict[str, Any] | None = None
    input_transform: dict[str, Any] | None = None  # models: their declared preprocessing


class JobBase(BaseModel):
    """The job resource: every field the API shows (``JobOut`` documents them), as stored.

    ``result`` is the worker's ``EditResult`` as it is: written once as its JSON, read back as the model.
    """

    id: str
    status: JobStatus
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    spec: dict[str, Any]
    progress: dict[str, Any] | None = None
    result: EditResult | None = Field(None, description="Once succeeded.")
    error: dict[str, Any] | None = None
    cancel_requested: bool = Field(False, description="A cancel was asked for and the worker has not stopped yet.")
    attempts: int = Field(
        0,
        description="Times a worker took the job; a job whose process died is queued again, up to "
        "GIF_JOB_MAX_ATTEMPTS attempts.",
    )
    warnings: list[str] | None = Field(
        None,
        description="Why the job may wait or ran again: no healthy worker when it was submitted, an attempt "
        "whose process died. The edit's own warnings are in result.warnings.",
    )


class JobRecord(JobBase, OwnedRecord):
    """A job as stored, decoded once from its Redis hash: the resource plus what only the service sees."""

    queue: str | None = None
    inputs: dict[str, InputRef]
    worker: dict[str, Any] | None = None

    @property
    def output_sha256s(self) -> list[str]:
        """The blobs the job wrote: the edited checkpoint and, for exported programs, the edited ``.pt2``; for a job of
        several methods, each method's."""
        return [blob.sha256 for blob in self.result.outputs] if self.result else []


class JobStore:
    def __init__(self, client: redis.Redis, keys: Keys, artifacts: Artifacts, heartbeat_ttl_s: float):
        self.client = client
        self.keys = keys
        self.artifacts = artifacts
        self.heartbeat_ttl_ms = int(heartbeat_ttl_s * 1000)
        self._write_progress = client.register_script(_WRITE_PROGRESS)
        self._note_attempt = client.register_script(_NOTE_ATTEMPT)
        self._create = client.register_script(_CREATE)

    # --- reading -----------------------------------------------------------------------------

    def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The record (JSON fields decoded), or None if missing or owned by someone else."""
        if not is_id("job", job_id):
            return None
        return self._decode(cast(dict[str, str], self.client.hgetall(self.keys.job(job_id))), owner)

    async def poll(self, job_id: str, owner: str, client: redis.asyncio.Redis) -> JobRecord | None:
        """``get`` on an asyncio client, for the route clients poll."""
        if not is_id("job", job_id):
            return None
        return self._decode(cast(dict[str, str], await client.hgetall(self.keys.job(job_id))), owner)

    def page(
        self, owner: str, status: str | None, limit: int, cursor: int | None
    ) -> tuple[list[JobRecord], int | None]:
        ids, next_cursor = page_ids(self.client, self.keys.jobs_of(owner, status), limit, cursor)
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            rows = pipe.execute()
        return [r for r in (self._decode(row, owner) for row in rows) if r], next_cursor

    def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        """Jobs by status: everyone's, or one owner's."""
        with self.client.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.zcard(self.keys.jobs_with(status) if owner is None else self.keys.jobs_of(owner, status))
            return dict(zip(STATUSES, pipe.execute(), strict=True))

    def durations(self) -> dict[str, str]:
        """Raw histogram counters: ``<status>:le:<bucket>``, ``<status>:count``, ``<status>:sum``."""
        return cast(dict[str, str], self.client.hgetall(self.keys.durations))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.exists(self.keys.cancel_flag(job_id)))

    @staticmethod
    def _decode(row: dict[str, str], owner: str | None) -> JobRecord | None:
        if not row or (owner is not None and row.get("owner") != owner):
            return None
        fields: dict[str, Any] = {name: value or None for name, value in row.items() if name in JobRecord.model_fields}
        for name in _PARSED_FIELDS:
            fields[name] = json.loads(row[name]) if row.get(name) else None
        fields["result"] = EditResult.model_validate_json(row["result"]) if row.get("result") else None
        fields["cancel_requested"] = row.get("cancel_requested") == "1" and row.get("status") == "running"
        return JobRecord.model_validate(fields)

    # --- the API's side ----------------------------------------------------------------------

    def create(
        self,
        owner: str,
        spec: dict[str, Any],
        inputs: dict[str, InputRef],
        queue: str,
        warnings: list[str] | None = None,
        active_limit: int | None = None,
    ) -> JobRecord | None:
        """Record a job queued on ``queue`` holding its input blobs; None if an input blob has vanished meanwhile.
        Raises ``active-jobs-limit`` when the owner already has ``active_limit`` jobs queued or running."""
        job_id = new_id("job")
        held: list[str] = []
        try:  # a store or Redis failure half-way gives back the holds taken
            for item in inputs.values():
                if not self.artifacts.hold(item.sha256, f"job:{job_id}"):
                    self._release(job_id, held)
                    return None
                held.append(item.sha256)
            seq = self.client.incr(self.keys.sequence)
            fields: dict[str, str | int] = {
                "id": job_id,
                "owner": owner,
                "seq": seq,
                "status": "queued",
                "created_at": utc_now(),
                "queue": queue,
                "spec": json.dumps(spec),
                "inputs": json.dumps({role: item.model_dump() for role, item in inputs.items()}),
                **({"warnings": json.dumps(warnings)} if warnings else {}),
            }
            index_keys = [self.keys.jobs_of(owner), self.keys.jobs_of(owner, "queued"), self.keys.jobs_with("queued")]
            active = int(
                self._create(
                    keys=[self.keys.job(job_id), *index_keys, self.keys.jobs_of(owner, "running")],
                    args=[active_limit or 0, seq, job_id, *(item for pair in fields.items() for item in pair)],
                )
            )
        except BaseException:
            self._release(job_id, held)
            raise
        if active >= 0:
            self._release(job_id, held)
            raise active_jobs_exceeded(cast(int, active_limit), active)
        return self.get(job_id)

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or ask a running one to stop; returns the status it had."""
        if self._transition(
            job_id, {"queued"}, "cancelled", error=job_error("cancelled", "cancelled before it started")
        ):
            return "queued"
        with self.client.pipeline() as pipe:
            pipe.set(self.keys.cancel_flag(job_id), "1", ex=7 * 24 * 3600)
            pipe.hget(self.keys.job(job_id), "status")
            _, status = pipe.execute()
        if status == "running":
            self.client.hset(self.keys.job(job_id), "cancel_requested", "1")
        else:
            self.client.delete(self.keys.cancel_flag(job_id))
        return status

    def delete(self, job_id: str) -> bool:
        """Forget a finished job and release its blobs (inputs and outputs: each goes with its last reference, so an
        edited model registered from the job keeps its file). Only the caller whose DEL removed the record releases
        them, so the user and retention deleting at once release once."""
        record = self.get(job_id)
        if record is None or record.status not in TERMINAL or not self.client.delete(self.keys.job(job_id)):
            return False
        with self.client.pipeline() as pipe:
            pipe.zrem(self.keys.jobs_of(record.owner), job_id)
            pipe.zrem(self.keys.jobs_of(record.owner, record.status), job_id)
            pipe.zrem(self.keys.jobs_with(record.status), job_id)
            pipe.zrem(self.keys.jobs_finished, job_id)
            pipe.execute()
        self._release(job_id, [i.sha256 for i in record.inputs.values()] + record.output_sha256s)
        return True

    # --- retention ---------------------------------------------------------------------------

    def ids_with(self, status: JobStatus) -> list[str]:
        return cast(list[str], self.client.zrange(self.keys.jobs_with(status), 0, -1))

    def finished_before(self, when: float, limit: int) -> list[str]:
        """Up to ``limit`` ids of jobs that finished before ``when`` (Unix seconds), oldest first."""
        return cast(list[str], self.client.zrangebyscore(self.keys.jobs_finished, "-inf", when, start=0, num=limit))

    def forget_finished(self, job_id: str) -> None:
        self.client.zrem(self.keys.jobs_finished, job_id)

    def index_finished_before_retention(self) -> None:
        """Add the jobs that finished before the retention index existed (an older version's) to it, once."""
        if not self.client.set(self.keys.jobs_finished_indexed, "1", nx=True):
            return
        for status in TERMINAL:
            ids = self.ids_with(cast(JobStatus, status))
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self.keys.job(job_id), "finished_at")
                finished = pipe.execute()
            stamps = {job_id: parse_time(at).timestamp() for job_id, at in zip(ids, finished, strict=True) if at}
            if stamps:
                self.client.zadd(self.keys.jobs_finished, stamps, nx=True)

    def reap_lost(self, max_attempts: int) -> list[tuple[str, str]]:
        """Run again (or fail, past ``max_attempts``) every running job whose heartbeat expired (its worker died);
        returns (id, "requeued" | "failed") for each."""
        lost: list[tuple[str, str]] = []
        for job_id in cast(list[str], self.client.zrange(self.keys.jobs_with("running"), 0, -1)):
            cause = "the worker running this job stopped answering"
            if outcome := self.retry_or_fail(job_id, cause, max_attempts, unless_alive=True):
                lost.append((job_id, outcome))
        return lost

    def retry_or_fail(
        self, job_id: str, cause: str, max_attempts: int, unless_alive: bool = False
    ) -> Literal["requeued", "failed"] | None:
        """A queued or running job whose process died: back to ``queued`` while it has had fewer than
        ``max_attempts`` attempts (the cause kept in its ``warnings``; whoever calls this enqueues it again), else
        failed as ``worker-lost`` with the cause. None when the job had ended (or its heartbeat still beats)."""
        attempts = self.attempts(job_id)
        if attempts < max_attempts:
            note = f"attempt {attempts} of {max_attempts} ended early: {cause}; the job was queued again"
            cleared = ("started_at", "worker", "progress")
            moved = self._transition(
                job_id, {"queued", "running"}, "queued", unless_alive, warning=note, cleared=cleared
            )
            return "requeued" if moved else None
        detail = f"{cause} (attempt {attempts} of {max_attempts}); submit it again"
        error = job_error("worker-lost", detail, retryable=True)
        if self._transition(job_id, {"queued", "running"}, "failed", unless_alive, error=error):
            return "failed"
        return None

    def note_attempt(self, job_id: str) -> int:
        """Count one more attempt at a queued job a worker just took off the queue (a second queue entry of a job
        that runs or ended counts nothing); returns the count."""
        return int(self._note_attempt(keys=[self.keys.job(job_id)]))

    def attempts(self, job_id: str) -> int:
        return int(cast(str | None, self.client.hget(self.keys.job(job_id), "attempts")) or 0)

    def queued_longer_than(self, seconds: float, queue: str) -> list[str]:
        """Ids of jobs on ``queue`` still queued ``seconds`` after they were recorded (candidates for re-enqueueing);
        deployments with several queues share records, and each re-enqueues only onto its own."""
        ids = cast(list[str], self.client.zrange(self.keys.jobs_with("queued"), 0, -1))
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), "created_at", "queue")
            rows = pipe.execute()
        now = parse_time(utc_now())
        return [
            job_id
            for job_id, (at, on) in zip(ids, rows, strict=True)
            if at and on in (queue, None) and (now - parse_time(at)).total_seconds() > seconds
        ]

    # --- the worker's side -------------------------------------------------------------------

    def start(self, job_id: str, worker: dict[str, Any]) -> bool:
        """queued → running, with a first heartbeat; False if the job was cancelled or taken meanwhile."""
        return bool(self._transition(job_id, {"queued"}, "running", started_at=utc_now(), worker=worker))

    def beat(self, job_id: str) -> None:
        self.client.set(self.keys.heartbeat(job_id), "1", px=self.heartbeat_ttl_ms)

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._write_progress(keys=[self.keys.job(job_id)], args=[json.dumps(progress)])

    def succeed(self, job_id: str, result: EditResult) -> bool:
        """running → succeeded, with the edit's result (stored as its JSON, read back as it is)."""
        return bool(self._transition(job_id, {"running"}, "succeeded", result=result.model_dump(mode="json")))

    def fail(self, job_id: str, error: dict[str, Any], status: str = "failed") -> bool:
        """running → failed (or cancelled), with the error object."""
        return bool(self._transition(job_id, {"running"}, status, error=error))

    # --- internals ---------------------------------------------------------------------------

    def _release(self, job_id: str, shas: Iterable[str]) -> None:
        for sha in set(shas):
            self.artifacts.release(sha, f"job:{job_id}")

    def _transition(
        self,
        job_id: str,
        allowed: set[str],
        new: str,
        unless_alive: bool = False,
        warning: str | None = None,
        cleared: tuple[str, ...] = (),
        **fields: Any,
    ) -> str | None:
        """Atomically move a job from one of ``allowed`` to ``new``, writing ``fields``, removing ``cleared`` and
        appending ``warning`` to its warnings; the old status, or None."""
        key, heartbeat = self.keys.job(job_id), self.keys.heartbeat(job_id)
        now = utc_now()
        if new in TERMINAL:
            fields["finished_at"] = now
        values = {k: json.dumps(v) if k in JSON_FIELDS else v for k, v in fields.items()}
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, heartbeat)
                    old, owner, seq, started_at, warnings = cast(
                        list[str], pipe.hmget(key, "status", "owner", "seq", "started_at", "warnings")
                    )
                    if old not in allowed or (unless_alive and pipe.exists(heartbeat)):
                        pipe.unwatch()
                        return None
                    if warning is not None:
                        values["warnings"] = json.dumps([*(json.loads(warnings) if warnings else []), warning])
                    pipe.multi()
                    pipe.hset(key, mapping={"status": new, **values})  # type: ignore[dict-item]  # str keys are fine
                    if cleared:
                        pipe.hdel(key, *cleared)
                    for index in (self.keys.jobs_of(owner, old), self.keys.jobs_with(old)):
                        pipe.zrem(index, job_id)
                    for index in (self.keys.jobs_of(owner, new), self.keys.jobs_with(new)):
                        pipe.zadd(index, {job_id: int(seq)})
                    if new == "running":
                        pipe.set(heartbeat, "1", px=self.heartbeat_ttl_ms)
                    if new == "queued":
                        pipe.delete(heartbeat)
                    if new in TERMINAL:
                        pipe.zadd(self.keys.jobs_finished, {job_id: parse_time(now).timestamp()})
                        pipe.delete(heartbeat, self.keys.cancel_flag(job_id))
                        pipe.hdel(key, "cancel_requested")
                        if started_at:
                            self._count_duration(pipe, new, (parse_time(now) - parse_time(started_at)).total_seconds())
                    pipe.execute()
                    return old
                except redis.WatchError:
                    continue

    def _count_duration(self, pipe: redis.client.Pipeline, status: str, seconds: float) -> None:
        for bucket in DURATION_BUCKETS_S:
            if seconds <= bucket:
                pipe.hincrby(self.keys.durations, f"{status}:le:{bucket}", 1)
        pipe.hincrby(self.keys.durations, f"{status}:count", 1)
        pipe.hincrbyfloat(self.keys.durations, f"{status}:sum", seconds)
