"""Limits that hold across services, each defined here once.

A value that two services check (Jobs accepts a job the Trainer will train; a
model name Jobs accepts is one the Trainer registers and serves; a request id
means the same to every Create RPC) lives here, so they cannot drift apart.
The contracts (`protos/`) document the same values in the fields' comments, and
`tests/runtime/test_runtime_limits.py` fails when a service or a proto says
otherwise.
"""

from __future__ import annotations

import re
import unicodedata
import uuid

from runtime.access import DEFAULT_PROJECT
from runtime.errors import invalid_argument

# Registered model names: letters, digits, '.', '_' or '-', starting with a letter or
# digit; safe in URLs, MLflow model URIs (`models:/<name>/<version>`) and NATS-free.
MAX_MODEL_NAME_CHARS = 128
MODEL_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_MODEL_NAME_CHARS - 1}}}")
MODEL_NAME_RULE = (
    f"1 to {MAX_MODEL_NAME_CHARS} letters, digits, '.', '_' or '-', starting with a letter or digit"
)
# A model of a project other than `default` is registered in MLflow as `<project>=<name>`
# (services/training/tracking/projects.py): MAX_MODEL_NAME_CHARS bounds that whole name,
# so such a project's own names have that much less room.
PROJECT_MODEL_SEPARATOR = "="

# Idempotency keys of Create RPCs (`request_id`): printable, no control characters.
MAX_REQUEST_ID_CHARS = 128
REQUEST_ID_RULE = f"at most {MAX_REQUEST_ID_CHARS} printable characters"

# A job's max_run_duration: what a job that sets none gets, and the most one may ask.
# The two settings of `runtime.settings.RunDurationSettings` default to these.
DEFAULT_MAX_RUN_DURATION_SECONDS = 3600.0
MAX_RUN_DURATION_LIMIT_SECONDS = 24 * 3600.0

# The request id that ties log lines together (gateway X-Request-Id, gRPC x-request-id
# metadata): a caller's is kept only when it is this tame, in every process alike;
# otherwise the process makes one. It is written into every log line of the request.
CORRELATION_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def correlation_id(presented: str | None) -> str:
    """The caller's request id when it follows CORRELATION_ID, else a new one."""
    if presented and CORRELATION_ID.fullmatch(presented):
        return presented
    return uuid.uuid4().hex


# Ids the services make (uuid4 hex) and any id a client sends back: letters, digits,
# '_' or '-'. An id also becomes part of NATS subjects and MLflow filters, where '.',
# '*', '>' and quotes would mean something else.
MAX_ID_CHARS = 64
RESOURCE_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_CHARS}}}")
RESOURCE_ID_RULE = f"1 to {MAX_ID_CHARS} letters, digits, '_' or '-'"

# A job's deliveries. The Trainer's max_attempts is at most MAX_ATTEMPTS_LIMIT (it fails a
# request delivered more often, so a few deliveries past it can still report); Jobs ignores
# an event of an attempt above ATTEMPT_CEILING: no Trainer was ever given that attempt, and
# applying it would make every real event look stale.
MAX_ATTEMPTS_LIMIT = 100
ATTEMPT_CEILING = 1000

# How much of a client's input an error message or ErrorInfo metadata may quote.
MAX_ECHO_CHARS = 200


def is_model_name(name: str) -> bool:
    return MODEL_NAME.fullmatch(name) is not None


def max_model_name_chars(project: str | None) -> int:
    """The longest model name a caller of `project` may give (None or "": `default`)."""
    if not project or project == DEFAULT_PROJECT:
        return MAX_MODEL_NAME_CHARS
    return MAX_MODEL_NAME_CHARS - len(project) - len(PROJECT_MODEL_SEPARATOR)


def model_name_too_long(name: str, project: str | None) -> str | None:
    """Why `name` does not fit in `project` once registered under its prefix, or None."""
    room = max_model_name_chars(project)
    if len(name) <= room:
        return None
    return (
        f"at most {room} characters in project {project!r}: it is registered as "
        f"'{project}{PROJECT_MODEL_SEPARATOR}<name>', {MAX_MODEL_NAME_CHARS} characters in all"
    )


def check_model_name(
    name: str, reason: str, field: str = "registered_model_name", project: str | None = None
) -> str:
    """`name` when it is a valid model name that fits `project` (None: any project's
    prefix is left out); INVALID_ARGUMENT `reason` otherwise."""
    if not is_model_name(name):
        raise invalid_argument(reason, f"{field} must be {MODEL_NAME_RULE}", **{field: echo(name)})
    if (too_long := model_name_too_long(name, project)) is not None:
        raise invalid_argument(reason, f"{field} must be {too_long}", **{field: echo(name)})
    return name


def check_request_id(request_id: str, reason: str) -> str | None:
    """The request id, or None when the client sent none; INVALID_ARGUMENT `reason`
    when it is too long or holds control or unprintable characters."""
    if not request_id:
        return None
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise invalid_argument(reason, f"request_id must be {REQUEST_ID_RULE}")
    return request_id


def check_resource_id(value: str, field: str, required_reason: str, invalid_reason: str) -> str:
    """An id a client sent: REQUIRED when empty, INVALID when malformed (quoted bounded)."""
    if not value:
        raise invalid_argument(required_reason, f"{field} is required")
    if RESOURCE_ID.fullmatch(value) is None:
        raise invalid_argument(
            invalid_reason, f"{field} must be {RESOURCE_ID_RULE}", **{field: echo(value)}
        )
    return value


def echo(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` as an error may quote it: at most `limit` characters, control characters
    replaced, so a hostile input cannot bloat or forge what the client reads back."""
    cleaned = "".join("?" if unicodedata.category(char) == "Cc" else char for char in text[:limit])
    return cleaned if len(text) <= limit else cleaned + "…"
