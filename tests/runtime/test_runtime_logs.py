"""JSON log lines (`runtime/logs.py`): ids from the context, `extra` fields, and the one
way an error is written."""

from __future__ import annotations

import json
import logging

import pytest

from runtime.logs import MAX_ERROR_FIELD_CHARS, JsonFormatter, error_fields, log_context


def formatted(message: str, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("modelyard.test", logging.WARNING, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    line: dict[str, object] = json.loads(JsonFormatter("jobs").format(record))
    return line


def test_a_line_carries_the_context_ids_and_extra_fields() -> None:
    with log_context(request_id="r1"), log_context(job_id="j1"):
        line = formatted("done", rows=5)
    assert line["service"] == "jobs"
    assert (line["request_id"], line["job_id"], line["rows"]) == ("r1", "j1", 5)
    assert "job_id" not in formatted("outside")


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (TimeoutError(), "TimeoutError"),
        (ConnectionRefusedError(111, "refused"), "ConnectionRefusedError: [Errno 111] refused"),
        (ValueError("bad value"), "ValueError: bad value"),
    ],
)
def test_error_fields_name_the_type_and_the_message(error: BaseException, field: str) -> None:
    assert error_fields(error) == {"error": field}
    assert formatted("failed", **error_fields(error))["error"] == field


def test_error_fields_are_bounded() -> None:
    field = error_fields(ValueError("x" * 100_000))["error"]
    assert len(field) == MAX_ERROR_FIELD_CHARS + 1
