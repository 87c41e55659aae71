"""Per-key limits, kept in Redis so that every API process shares them; each is off unless its setting is given.

- ``GIF_QUOTA_ACTIVE_JOBS``: queued + running jobs of a key, checked atomically as the job is recorded
  (``JobStore.create``), so two API processes cannot both admit the last one.
- ``GIF_QUOTA_STORED_BYTES``: the sizes of a key's models and datasets (edited models included), reserved
  atomically before an upload is stored and given back when it is deleted or expires. An edited checkpoint is
  counted but never refused: its job was admitted already.
- ``GIF_QUOTA_SUBMITS_PER_MINUTE``: a token bucket per key (that many submits at once, refilled at that rate),
  on Redis's clock, so API processes on hosts whose clocks differ agree.

Usage is counted whether or not a limit is set, so ``GET /v1/usage`` always has it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import redis

from service.core.errors import ServiceError
from service.core.records import Keys

# Refuse when used + size would pass the limit (0: no limit); else add size. Returns {admitted, usage}.
_RESERVE_BYTES = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local size, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if limit > 0 and used + size > limit then
  return {0, used}
end
return {1, redis.call('INCRBY', KEYS[1], size)}
"""

# One token per submit; the bucket holds at most ARGV[1] tokens and refills ARGV[1] per minute.
# Returns {admitted, tokens left (as a string: Lua numbers become integers), milliseconds until the next token}.
_TAKE_TOKEN = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) * 1000 + math.floor(tonumber(now_us) / 1000)
local capacity = tonumber(ARGV[1])
local per_ms = capacity / 60000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * per_ms)
local admitted, wait = 0, 0
if tokens >= 1 then
  tokens, admitted = tokens - 1, 1
else
  wait = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return {admitted, tostring(tokens), wait}
"""

# The bucket's tokens now, without taking one.
_PEEK_TOKENS = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) * 1000 + math.floor(tonumber(now_us) / 1000)
local capacity = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
return tostring(math.min(capacity, tokens + math.max(0, now - at) * capacity / 60000))
"""

FORM_ENVELOPE_BYTES = 80 * 1024
"""What a multipart body may carry besides the file (boundaries, headers, a text field of up to 64 KiB): the up-front
check does not count it against the quota; the exact file size is reserved once the file is read."""

ACTIVE_JOBS_RETRY_AFTER_S = 10
"""A job's end cannot be foreseen: a client that waits this long and asks again does not hammer the API."""


@dataclass(frozen=True)
class Limits:
    active_jobs: int | None = None
    stored_bytes: int | None = None
    submits_per_minute: int | None = None


class QuotaExceeded(ServiceError):
    """A key past one of its limits; the problem names the limit, its value and the key's usage."""

    def __init__(self, code: str, name: str, limit: int, usage: float, detail: str, retry_after_s: int | None = None):
        headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
        super().__init__(
            code, detail, headers=headers, extensions={"quota": {"name": name, "limit": limit, "usage": usage}}
        )


def active_jobs_exceeded(limit: int, usage: int) -> QuotaExceeded:
    return QuotaExceeded(
        "active-jobs-limit",
        "active_jobs",
        limit,
        usage,
        f"this key has {usage} jobs queued or running, its limit (GIF_QUOTA_ACTIVE_JOBS) is {limit}; "
        "submit again when one of them has ended",
        ACTIVE_JOBS_RETRY_AFTER_S,
    )


class Quotas:
    def __init__(self, client: redis.Redis, keys: Keys, limits: Limits):
        self.client = client
        self.keys = keys
        self.limits = limits
        self._reserve_bytes = client.register_script(_RESERVE_BYTES)
        self._take_token = client.register_script(_TAKE_TOKEN)
        self._peek_tokens = client.register_script(_PEEK_TOKENS)

    # --- submits per minute ------------------------------------------------------------------

    def take_submit(self, owner: str) -> None:
        """Spend one of the key's submits, or raise ``rate-limited`` with the wait until the next one."""
        limit = self.limits.submits_per_minute
        if limit is None:
            return
        admitted, tokens, wait_ms = cast(
            list[Any], self._take_token(keys=[self.keys.submit_bucket(owner)], args=[limit])
        )
        if not admitted:
            raise QuotaExceeded(
                "rate-limited",
                "submits_per_minute",
                limit,
                limit - float(tokens),
                f"this key may submit {limit} jobs a minute (GIF_QUOTA_SUBMITS_PER_MINUTE); "
                f"the next one is possible in {wait_ms / 1000:.1f} s",
                max(1, math.ceil(int(wait_ms) / 1000)),
            )

    def submits_available(self, owner: str) -> float | None:
        limit = self.limits.submits_per_minute
        if limit is None:
            return None
        return float(cast(str, self._peek_tokens(keys=[self.keys.submit_bucket(owner)], args=[limit])))

    # --- stored bytes ------------------------------------------------------------------------

    def stored_bytes(self, owner: str) -> int:
        return int(cast(str | None, self.client.get(self.keys.stored_bytes(owner))) or 0)

    def check_room(self, owner: str, declared_bytes: int | None) -> None:
        """Refuse an upload before its body is read when the key is at its limit, or when the body it declares
        (its Content-Length, less the form's envelope) would pass it."""
        limit = self.limits.stored_bytes
        if limit is None:
            return
        usage = self.stored_bytes(owner)
        if usage >= limit or usage + (declared_bytes or 0) - FORM_ENVELOPE_BYTES > limit:
            raise self._stored_bytes_exceeded(limit, usage, declared_bytes)

    def reserve_bytes(self, owner: str, size: int, enforce: bool = True) -> None:
        """Count ``size`` more bytes for the key; with ``enforce``, refuse (counting nothing) past the limit."""
        limit = (self.limits.stored_bytes or 0) if enforce else 0
        admitted, usage = cast(list[int], self._reserve_bytes(keys=[self.keys.stored_bytes(owner)], args=[size, limit]))
        if not admitted:
            raise self._stored_bytes_exceeded(limit, usage, size)

    def release_bytes(self, pipe: redis.client.Pipeline, owner: str, size: int) -> None:
        """Give bytes back, inside the caller's pipeline (the one that deletes the record that held them)."""
        pipe.decrby(self.keys.stored_bytes(owner), size)

    @staticmethod
    def _stored_bytes_exceeded(limit: int, usage: int, size: int | None) -> QuotaExceeded:
        adding = f"; this upload adds {size} bytes" if size else ""
        return QuotaExceeded(
            "storage-quota-exceeded",
            "stored_bytes",
            limit,
            usage,
            f"this key stores {usage} bytes of models and datasets, its limit (GIF_QUOTA_STORED_BYTES) is "
            f"{limit}{adding}; delete some to make room",
        )
