"""Signed job notifications: when a job ends, its resource is POSTed to the job's ``notify.url``.

Signed as Standard Webhooks (standardwebhooks.com): headers ``webhook-id`` (the job id and its final status),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key,
"{id}.{timestamp}.{body}")), the key being ``GIF_WEBHOOK_SECRET`` (a ``whsec_`` prefix marks base64 key bytes,
as the specification writes them; any other secret is used as UTF-8). Only hosts listed in
``GIF_WEBHOOK_ALLOWED_HOSTS`` are called, checked when the job is submitted and again before delivery.
Delivery is tried three times with back-off by the process that ended the job; a failed delivery is logged
and never changes the job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from urllib.parse import urlsplit

import httpx

from service.core.context import ServiceContext
from service.core.settings import Settings

ATTEMPTS = 3
TIMEOUT_S = 5.0
BACKOFF_S = 0.5

log = logging.getLogger("service.core.webhooks")


def signing_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(signing_key(secret), signed, hashlib.sha256).digest()).decode()


def target_problem(url: str, settings: Settings) -> str | None:
    """Why the service will not call ``url``, or None."""
    if not settings.webhook_secret:
        return "this server sends no notifications: GIF_WEBHOOK_SECRET is not set"
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "the URL must be http(s)://host/…"
    if parts.hostname not in settings.webhook_allowed_hosts:
        return f"{parts.hostname} is not in GIF_WEBHOOK_ALLOWED_HOSTS"
    return None


def notify_end(ctx: ServiceContext, job_id: str) -> bool:
    """POST the ended job's resource to its ``notify.url``; True when delivered (False: none asked, or failed)."""
    record = ctx.jobs.get(job_id)
    notify = (record.spec.get("notify") or {}) if record is not None else {}
    url = notify.get("url")
    if record is None or not url or record.status not in ("succeeded", "failed", "cancelled"):
        return False
    problem = target_problem(url, ctx.settings)
    if problem is not None:
        log.warning("notification not sent: %s", problem, extra={"job_id": job_id})
        return False
    assert ctx.settings.webhook_secret is not None  # target_problem checked it
    body = json.dumps(record.public(), separators=(",", ":")).encode()
    message_id = f"{job_id}.{record.status}"
    for attempt in range(1, ATTEMPTS + 1):
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(ctx.settings.webhook_secret, message_id, timestamp, body),
        }
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S, follow_redirects=False)
            if response.is_success:
                log.info("notification delivered", extra={"job_id": job_id, "attempt": attempt})
                return True
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        log.warning("notification attempt %d failed: %s", attempt, reason, extra={"job_id": job_id})
        time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    return False


def notify_end_in_background(ctx: ServiceContext, job_id: str) -> None:
    """``notify_end`` off the caller's thread (the API and the reaper must not wait for a slow receiver)."""
    threading.Thread(target=notify_end, args=(ctx, job_id), name=f"notify-{job_id}", daemon=True).start()
