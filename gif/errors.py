"""The engine's error types: one class per thing a user can get wrong or the engine can refuse.

Every error carries a stable ``code`` (the service turns it into a problem+json ``type``) and,
where a whole list of problems was found, all of them at once in ``problems``.
"""

from __future__ import annotations


class GifError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "gif-error"

    def __init__(self, detail: str, problems: list[str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.problems = list(problems or [])

    def __str__(self) -> str:
        if not self.problems:
            return self.detail
        return self.detail + ": " + "; ".join(self.problems)


class InvalidSpecError(GifError):
    """The job specification is malformed or does not fit the model and data."""

    code = "invalid-spec"


class UnknownArchitectureError(GifError):
    """The architecture name or its config is not in the server-side registry."""

    code = "unknown-architecture"


class InvalidWeightsError(GifError):
    """A checkpoint cannot be read safely, or its tensors do not match the architecture."""

    code = "invalid-weights"


class InvalidDatasetError(GifError):
    """A dataset file is unreadable, or its tensors are inconsistent (shape, dtype, labels, NaN)."""

    code = "invalid-dataset"


class TooLargeError(GifError):
    """An upload declares (or would expand to) more bytes than the service's limit allows."""

    code = "payload-too-large"


class NonFiniteError(GifError):
    """A Hessian-vector product, gradient or solution became NaN/Inf and could not be recovered."""

    code = "non-finite"


class EditCancelled(GifError):
    """The caller asked the engine to stop; raised between solver iterations and phases."""

    code = "cancelled"


class OutOfMemoryError(GifError):
    """The edit did not fit in the device's memory, even after one retry with smaller batches and no cache."""

    code = "out-of-memory"
