"""Structured logs: one JSON object a line, carrying the request and job ids.

Ids are kept in context variables, so every log line written while handling a
request or a job carries them without being passed around:

    with log_context(job_id=job.job_id):
        logger.info("training started", extra={"rows": 569})

An error that is logged, not raised, goes in one field written one way:

    logger.warning("heartbeat failed", extra=error_fields(error))
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "modelyard_log_context", default=None
)

# Attributes every LogRecord has; anything else came from `extra=` and is logged.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get() or {})


# Long enough for any message worth reading, short enough that a hostile input echoed
# in an exception's text cannot bloat a log line.
MAX_ERROR_FIELD_CHARS = 2000


def error_fields(error: BaseException) -> dict[str, str]:
    """The `extra` fields of a log line about an error: `{"error": "Type: message"}`.

    The type is always there (some exceptions have an empty message, and a type
    names a failure better than `repr`); the text is bounded."""
    text = str(error)
    described = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(described) > MAX_ERROR_FIELD_CHARS:
        described = described[:MAX_ERROR_FIELD_CHARS] + "…"
    return {"error": described}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
            **(_context.get() or {}),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries are chatty at INFO; their warnings still come through.
    for noisy in ("alembic", "botocore", "urllib3", "mlflow", "nats", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
