"""Structured logs: one JSON object per line, with the job id wherever a job is being worked on.

Extra fields passed with ``extra={...}`` become top-level keys; ``job_context`` sets the job id for
every log line of the code it wraps (the worker wraps each job in it).
"""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

current_job: ContextVar[str | None] = ContextVar("current_job", default=None)
# LogRecord attributes that are not extras; uvicorn adds "color_message" (the message with ANSI colours).
_NOT_EXTRA = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = current_job.get()
        if job_id:
            entry["job_id"] = job_id
        entry.update({k: v for k, v in vars(record).items() if k not in _NOT_EXTRA})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


def configure_logging(level: str) -> dict[str, Any]:
    """Send every logger (uvicorn's and RQ's included) through one JSON handler; returns the dictConfig used."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker")
        },
    }
    logging.config.dictConfig(config)
    return config
