"""Keeping the MLflow credentials out of logs and job records.

The password reaches the MLflow client only through its environment variables;
as a second line of defence, every log line and every error message the
Trainer publishes is scrubbed of it (and of credentials written into a URL).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

from services.training.settings import TrainerSettings

_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")
REDACTED = "***"


def redactor(settings: TrainerSettings) -> Callable[[str], str]:
    secrets = [
        secret.get_secret_value()
        for secret in (settings.mlflow_password, settings.service_token)
        if secret is not None and secret.get_secret_value()
    ]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return _URL_CREDENTIALS.sub(f"{REDACTED}@", text)

    return redact


class RedactingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


def redact_logs(redact: Callable[[str], str]) -> None:
    """Wrap the formatter of every root handler (set up by runtime.logs)."""
    for handler in logging.getLogger().handlers:
        inner = handler.formatter or logging.Formatter()
        handler.setFormatter(RedactingFormatter(inner, redact))


def configure_mlflow_client(settings: TrainerSettings) -> None:
    """MLflow reads basic-auth credentials and HTTP behaviour from the environment."""
    if settings.mlflow_username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = settings.mlflow_username
    if settings.mlflow_password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = settings.mlflow_password.get_secret_value()
    # Fail over to the job's retry policy rather than MLflow's minutes of retrying.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    # Ending a run would otherwise fetch it again just to print its URL on stdout.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
