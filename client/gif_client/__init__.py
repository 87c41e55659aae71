"""A client of the GIF service that needs nothing heavier than httpx.

    from gif_client import Client

    client = Client("http://127.0.0.1:8000", api_key=None)
    model = client.upload_model("model.safetensors", {"name": "tinynet", "config": {}})
    train = client.upload_dataset("train.safetensors")
    job = client.submit({"model_id": model["id"], "train_dataset_id": train["id"],
                         "request": {"kind": "remove_class", "classes": [8]}})
    job = client.wait(job["id"])            # a progress bar on stderr: phase, solver iteration, residual
    client.download(job["id"], "edited.safetensors")

Every problem+json answer is raised as a ``ProblemError`` (a subclass per HTTP status) carrying the
problem's ``type``, ``detail`` and field ``errors``.
"""

from gif_client.client import Client, IntegrityError
from gif_client.problems import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    ProblemError,
    RateLimitedError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationFailed,
)

__all__ = [
    "Client",
    "ConflictError",
    "ForbiddenError",
    "IntegrityError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProblemError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationFailed",
]
