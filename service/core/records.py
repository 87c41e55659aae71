"""Redis plumbing shared by the record stores: the connection, every key name, ids, time and pages.

All keys start with ``Settings.key_prefix``, so several deployments (or test sessions) can share
one Redis. Lists are sorted sets scored by a global sequence number: a page cursor is the score
of the last item seen, which stays valid while items are added or deleted.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

import redis
import redis.asyncio
from pydantic import BaseModel, TypeAdapter
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

ID_HEX_DIGITS = 20


CONNECT_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 30.0


# A command that meets a dropped connection (Redis restarted) or a Redis still loading its append-only file is
# retried on a fresh connection for about 3 s before the caller sees the error.
RETRIED_ERRORS = [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError]
RETRIES = 6


def _options(decode: bool, timeout_s: float | None, retry: Any) -> dict[str, Any]:
    connect_s = CONNECT_TIMEOUT_S if timeout_s is None else min(CONNECT_TIMEOUT_S, timeout_s)
    return {
        "decode_responses": decode,
        "socket_connect_timeout": connect_s,
        "socket_timeout": timeout_s,
        "health_check_interval": 30,
        "retry": retry,
        "retry_on_error": RETRIED_ERRORS,
    }


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.1)


def connect(url: str, *, decode: bool = True, timeout_s: float | None = REPLY_TIMEOUT_S) -> redis.Redis:
    """Every synchronous Redis client is built here. Records use replies decoded to ``str``; RQ pickles its own
    job metadata and needs a binary client without a reply timeout (its workers block on the queue for minutes)."""
    return redis.Redis.from_url(url, **_options(decode, timeout_s, Retry(_backoff(), RETRIES)))


def connect_async(url: str) -> redis.asyncio.Redis:
    """The same as ``connect``, for the event loop: the API's hot path (polling a job) never waits for a thread."""
    return redis.asyncio.Redis.from_url(url, **_options(True, REPLY_TIMEOUT_S, AsyncRetry(_backoff(), RETRIES)))


def new_id(kind: str) -> str:
    """``job_…``, ``model_…``, ``dataset_…``: 80 random bits, readable in logs and URLs."""
    return f"{kind}_{secrets.token_hex(ID_HEX_DIGITS // 2)}"


def is_id(kind: str, value: str) -> bool:
    """Whether ``value`` could be an id of ``kind``; anything else never reaches a Redis key name."""
    return re.fullmatch(f"{kind}_[0-9a-f]{{{ID_HEX_DIGITS}}}", value) is not None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class OwnedRecord(BaseModel):
    """What a stored record (a job, a model, a dataset) adds to its resource: who owns it, and its place in the
    owner's lists. A record class names its resource first, ``class JobRecord(JobBase, OwnedRecord)``: the resource
    model declares the public fields once, for the record and the response alike."""

    owner: str
    seq: int
    _resource: ClassVar[TypeAdapter[Any]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._resource = TypeAdapter(cls.__bases__[0])

    def public(self) -> dict[str, Any]:
        """The resource as JSON: the record serialised as its resource class, which leaves out what only the service
        sees (owner, sequence number, and each record's own internal fields)."""
        return self._resource.dump_python(self, mode="json")


class Keys:
    """Every Redis key name, in one place."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    @property
    def sequence(self) -> str:
        return f"{self.prefix}:sequence"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def heartbeat(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:heartbeat"

    def cancel_flag(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def jobs_of(self, owner: str, status: str | None = None) -> str:
        return f"{self.prefix}:jobs:owner:{owner}" + (f":{status}" if status else "")

    def jobs_with(self, status: str) -> str:
        return f"{self.prefix}:jobs:status:{status}"

    @property
    def jobs_finished(self) -> str:
        """Finished jobs scored by when they finished (Unix seconds), for retention."""
        return f"{self.prefix}:jobs:finished"

    @property
    def jobs_finished_indexed(self) -> str:
        """Set once jobs that finished before the index existed have been added to it."""
        return f"{self.prefix}:jobs:finished:indexed"

    @property
    def uploads_used(self) -> str:
        """Uploads (``<kind>:<id>``) scored by when they were last used (Unix seconds), for retention."""
        return f"{self.prefix}:uploads:used"

    @property
    def durations(self) -> str:
        return f"{self.prefix}:jobs:durations"

    def item(self, kind: str, item_id: str) -> str:
        return f"{self.prefix}:{kind}:{item_id}"

    def items_of(self, kind: str, owner: str) -> str:
        return f"{self.prefix}:{kind}s:owner:{owner}"

    def idempotency(self, owner: str, key_digest: str) -> str:
        return f"{self.prefix}:idempotency:{owner}:{key_digest}"

    def stored_bytes(self, owner: str) -> str:
        return f"{self.prefix}:usage:{owner}:stored_bytes"

    def submit_bucket(self, owner: str) -> str:
        return f"{self.prefix}:usage:{owner}:submits"

    def request_bucket(self, owner: str) -> str:
        return f"{self.prefix}:usage:{owner}:requests"

    def blob_refs(self, sha256: str) -> str:
        return f"{self.prefix}:blob:{sha256}:refs"

    def blob_lock(self, sha256: str) -> str:
        return f"{self.prefix}:blob:{sha256}:lock"


def page_ids(client: redis.Redis, key: str, limit: int, cursor: int | None) -> tuple[list[str], int | None]:
    """Newest first: up to ``limit`` ids scored below ``cursor``, and the cursor of the next page (or None)."""
    top = f"({cursor}" if cursor is not None else "+inf"
    rows: list[tuple[str, float]] = client.zrevrangebyscore(  # type: ignore[assignment]  # decoded client
        key, top, "-inf", start=0, num=limit + 1, withscores=True
    )
    ids = [member for member, _ in rows[:limit]]
    next_cursor = int(rows[limit - 1][1]) if len(rows) > limit else None
    return ids, next_cursor
