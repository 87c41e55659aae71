"""Idempotent job submission: an ``Idempotency-Key`` names one job per caller until it expires.

A client that retries ``POST /v1/jobs`` after a timeout sends the same key and body and gets the job the
first attempt created; the same key with another body is refused. The key is reserved (``SET NX``) before
the job is created, so two concurrent attempts make one job: the second waits briefly for the first.
A submission that fails (a 4xx) releases its key, so a corrected request may use it again.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import redis

from service.core.errors import ServiceError
from service.core.records import Keys

WAIT_FOR_PENDING_S = 5.0


def fingerprint(body: dict[str, Any]) -> str:
    """The body's identity: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int):
        self.client, self.keys, self.ttl_s = client, keys, ttl_s

    def _name(self, owner: str, key: str) -> str:
        return self.keys.idempotency(owner, hashlib.sha256(key.encode()).hexdigest())

    def claim(self, owner: str, key: str, body_fingerprint: str) -> str | None:
        """None when this request now holds the key (it must ``record`` or ``release`` it); else the id of the
        job the key already names. Raises a 422 problem when the key was used with another body."""
        name = self._name(owner, key)
        deadline = time.monotonic() + WAIT_FOR_PENDING_S
        while True:
            pending = json.dumps({"fingerprint": body_fingerprint, "job_id": None})
            if self.client.set(name, pending, nx=True, ex=self.ttl_s):
                return None
            raw = self.client.get(name)
            if raw is None:  # expired or released in between: try to take it again
                continue
            entry = json.loads(raw)
            if entry["fingerprint"] != body_fingerprint:
                raise ServiceError(
                    "idempotency-key-reused",
                    "this Idempotency-Key was used with a different request body; use a new key",
                    [{"parameter": "Idempotency-Key", "in": "header", "detail": "already used with another body"}],
                )
            if entry["job_id"] is not None:
                return str(entry["job_id"])
            if time.monotonic() > deadline:
                raise ServiceError("conflict", "a request with this Idempotency-Key is still being processed; retry")
            time.sleep(0.05)

    def record(self, owner: str, key: str, body_fingerprint: str, job_id: str) -> None:
        entry = json.dumps({"fingerprint": body_fingerprint, "job_id": job_id})
        self.client.set(self._name(owner, key), entry, ex=self.ttl_s)

    def release(self, owner: str, key: str) -> None:
        self.client.delete(self._name(owner, key))
