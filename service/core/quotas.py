"""Per-key limits, kept in Redis so that every API process shares them; each is off unless its setting is given.

- ``GIF_QUOTA_ACTIVE_JOBS``: queued + running jobs of a key, checked atomically as the job is recorded
  (``JobStore.create``), so two API processes cannot both admit the last one.
- ``GIF_QUOTA_STORED_BYTES``: the sizes of a key's models and datasets (edited models included), reserved
  atomically before an upload is stored and given back when it is deleted or expires. An edited checkpoint is
  counted but never refused: its job was admitted already.
- ``GIF_QUOTA_SUBMITS_PER_MINUTE``: a token bucket per key (that many submits at once, refilled at that rate),
  on Redis's clock, so API processes on hosts whose clocks differ agree.
- ``GIF_QUOTA_REQUESTS_PER_SECOND``: the same for every ``/v1`` request of a key (a poller at 1,000 requests a
  second is held to its rate, and other keys' requests are not queued behind it).

Usage is counted whether or not a limit is set, so ``GET /v1/usage`` always has it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio

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

# A token bucket on Redis's clock: at most ARGV[1] tokens, refilled with one every ARGV[2] milliseconds; ARGV[3] = 1
# takes a token, 0 only reads the level. Returns {admitted, tokens left (a string: Lua numbers become integers),
# milliseconds until the next token}.
_TOKEN_BUCKET = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) * 1000 + math.floor(tonumber(now_us) / 1000)
local capacity, per_ms, take = tonumber(ARGV[1]), 1 / tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
tokens = math.min(capacity, tokens + math.max(0, now - (tonumber(state[2]) or now)) * per_ms)
if take == 0 then
  return {0, tostring(tokens), 0}
end
local admitted, wait = 0, 0
if tokens >= 1 then
  tokens, admitted = tokens - 1, 1
else
  wait = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * capacity / per_ms))
return {admitted, tostring(tokens), wait}
"""

FORM_ENVELOPE_BYTES = 80 * 1024
"""What a multipart body may carry besides the file (boundaries, headers, a text field of up to 64 KiB): the up-front
check does not count it against the quota; the exact file size is reserved once the file is read."""

RATE_LIMITED_DELAY_S = 1.0
"""How long a request past GIF_QUOTA_REQUESTS_PER_SECOND waits for its 429 (its Retry-After, as a per-second bucket
always refills within it)."""

ACTIVE_JOBS_RETRY_AFTER_S = 10
"""A job's end cannot be foreseen: a client that waits this long and asks again does not hammer the API."""


@dataclass(frozen=True)
class Limits:
    active_jobs: int | None = None
    stored_bytes: int | None = None
    submits_per_minute: int | None = None
    requests_per_second: int | None = None


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


def request_burst(per_second: int) -> int:
    """A key's requests may come a quarter of a second's worth at once: enough for pollers catching up after a stall,
    while a closed-loop client's burst (one a second, after its 429s' delay) keeps the API busy for tens of
    milliseconds, not for the quarter second a full second's worth took on two cores."""
    return max(1, math.ceil(per_second / 4))


def rate_limited(name: str, limit: int, per: str, setting: str, tokens: str, wait_ms: int) -> QuotaExceeded:
    return QuotaExceeded(
        "rate-limited",
        name,
        limit,
        round(max(0.0, limit - float(tokens)), 3),
        f"this key may make {limit} {name.split('_per_')[0]} a {per} ({setting}); the next is possible in "
        f"{wait_ms / 1000:.1f} s",
        max(1, math.ceil(wait_ms / 1000)),
    )


class Quotas:
    def __init__(self, client: redis.Redis, async_client: redis.asyncio.Redis, keys: Keys, limits: Limits):
        self.client = client
        self.keys = keys
        self.limits = limits
        self._reserve_bytes = client.register_script(_RESERVE_BYTES)
        self._bucket = client.register_script(_TOKEN_BUCKET)
        self._async_bucket = async_client.register_script(_TOKEN_BUCKET)

    # --- rates -------------------------------------------------------------------------------

    def take_submit(self, owner: str) -> None:
        """Spend one of the key's submits, or raise ``rate-limited`` with the wait until the next one."""
        limit = self.limits.submits_per_minute
        if limit is None:
            return
        args = [limit, 60_000 / limit, 1]
        admitted, tokens, wait_ms = cast(list[Any], self._bucket(keys=[self.keys.submit_bucket(owner)], args=args))
        if not admitted:
            raise rate_limited("submits_per_minute", limit, "minute", "GIF_QUOTA_SUBMITS_PER_MINUTE", tokens, wait_ms)

    def submits_available(self, owner: str) -> float | None:
        """Submits the key may make now (its bucket's level); None without a limit."""
        limit = self.limits.submits_per_minute
        return None if limit is None else self._level(self.keys.submit_bucket(owner), limit, 60_000 / limit)

    def requests_available(self, owner: str) -> float | None:
        limit = self.limits.requests_per_second
        return (
            None if limit is None else self._level(self.keys.request_bucket(owner), request_burst(limit), 1000 / limit)
        )

    def _level(self, bucket: str, capacity: int, ms_per_token: float) -> float:
        _, tokens, _ = cast(list[Any], self._bucket(keys=[bucket], args=[capacity, ms_per_token, 0]))
        return float(tokens)

    async def take_request(self, owner: str) -> None:
        """Spend one of the key's requests this second (every ``/v1`` route), on the event loop's Redis client.

        A request past the rate is answered 429 after ``RATE_LIMITED_DELAY_S``, the Retry-After it carries: a client
        that ignores it and asks again at once gains nothing, and each connection it holds costs the API an idle
        coroutine a second instead of a request's work each time (bench/SERVICE.md: answered at once, a closed-loop
        poller's 429s alone, 1,400 a second, took another key's p99 from 6 ms to 190 ms on two cores)."""
        limit = self.limits.requests_per_second
        if limit is None:
            return
        bucket = self.keys.request_bucket(owner)
        args = [request_burst(limit), 1000 / limit, 1]
        admitted, tokens, wait_ms = await self._async_bucket(keys=[bucket], args=args)
        if not admitted:
            await asyncio.sleep(RATE_LIMITED_DELAY_S)
            raise rate_limited("requests_per_second", limit, "second", "GIF_QUOTA_REQUESTS_PER_SECOND", tokens, wait_ms)

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
