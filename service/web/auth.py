"""Optional API keys: with ``GIF_API_KEYS`` set, every ``/v1`` route needs ``Authorization: Bearer <key>``.

Each model, dataset and job belongs to the key that created it (stored as a hash of the key,
never the key); another key gets 404, as if it did not exist. Without keys every caller is the
same owner, ``anonymous``. Health, readiness, metrics and the docs stay open: probes and
Prometheus scrapers carry no keys, and none of them shows anyone's data.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.core.errors import ServiceError

ANONYMOUS = "anonymous"
bearer = HTTPBearer(auto_error=False, description="An API key, when the server is configured with GIF_API_KEYS.")


def owner_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


async def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The owner id of the caller; 401 when keys are configured and none of them was given, 429 past the key's
    GIF_QUOTA_REQUESTS_PER_SECOND.

    ``async`` so that FastAPI runs it inline (a plain function costs a thread-pool round trip per request) and the
    rate check awaits Redis without a thread.
    """
    ctx = request.app.state.context
    keys = ctx.settings.api_keys
    owner = ANONYMOUS
    if keys:
        given = credentials.credentials.encode() if credentials else b""
        matched = [key for key in keys if hmac.compare_digest(key.encode(), given)]
        if not matched:
            raise ServiceError(
                "unauthorized",
                "send a valid API key as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        owner = owner_of(matched[0])
    await ctx.quotas.take_request(owner)
    return owner


Caller = Annotated[str, Depends(caller)]
