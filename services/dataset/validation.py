"""Checks of what callers send, each refusing with its stable reason code."""

from __future__ import annotations

import unicodedata
from typing import cast

from modelyard.dataset.v1 import dataset_service_pb2
from runtime.errors import invalid_argument
from runtime.limits import check_request_id
from services.dataset import reasons

DownloadFormat = dataset_service_pb2.DownloadDatasetRequest.Format

MAX_DISPLAY_NAME_CHARS = 200
MAX_SHEET_CHARS = 200
MAX_BATCH_ROWS = 1_048_576


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def validate_display_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_DISPLAY_NAME_CHARS or _has_control_characters(name):
        raise invalid_argument(
            reasons.DISPLAY_NAME_INVALID,
            f"display_name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters, "
            "not blank, without control characters",
        )
    return name


def validate_delimiter(delimiter: str) -> str:
    """The delimiter to use; "" when it is to be detected from the text."""
    if delimiter == "":
        return ""
    if delimiter in ("\\t", "tab"):
        return "\t"
    if len(delimiter) != 1 or not delimiter.isascii() or delimiter in '"\r\n':
        raise invalid_argument(
            reasons.DELIMITER_INVALID,
            "delimiter must be one ASCII character other than a quote or a line break; "
            'use "\\t" for tab',
        )
    return delimiter


def validate_request_id(request_id: str) -> str | None:
    return check_request_id(request_id, reasons.REQUEST_ID_INVALID)


def validate_sheet(sheet: str) -> str:
    if len(sheet) > MAX_SHEET_CHARS or _has_control_characters(sheet):
        raise invalid_argument(
            reasons.SHEET_NOT_FOUND,
            f"sheet must be at most {MAX_SHEET_CHARS} characters, without control characters",
        )
    return sheet


def validate_dataset_id(dataset_id: str) -> str:
    if not dataset_id:
        raise invalid_argument(reasons.DATASET_ID_REQUIRED, "dataset_id is required")
    # Ids are 32 hexadecimal characters; anything far off (a NUL, which PostgreSQL
    # refuses outright) is no id.
    if len(dataset_id) > MAX_DISPLAY_NAME_CHARS or _has_control_characters(dataset_id):
        raise invalid_argument(
            reasons.DATASET_ID_INVALID, "dataset_id is not a dataset id", dataset_id=dataset_id[:64]
        )
    return dataset_id


def validate_reference(reference: str) -> str:
    if not reference:
        raise invalid_argument(reasons.DATASET_ID_REQUIRED, "a dataset reference is required")
    too_long = len(reference) > MAX_DISPLAY_NAME_CHARS + 24
    # No id or name holds a control character (and PostgreSQL refuses a NUL outright).
    if not reference.strip() or too_long or _has_control_characters(reference):
        raise invalid_argument(
            reasons.DATASET_ID_INVALID,
            "reference must be a dataset id, a display name or name@version",
        )
    return reference


def validate_batch_rows(batch_rows: int) -> int:
    if batch_rows < 0 or batch_rows > MAX_BATCH_ROWS:
        raise invalid_argument(
            reasons.BATCH_ROWS_INVALID, f"batch_rows must be between 0 and {MAX_BATCH_ROWS}"
        )
    return batch_rows


def validate_download_format(value: int) -> DownloadFormat:
    """The format to stream, FORMAT_UNSPECIFIED read as ORIGINAL."""
    if value == DownloadFormat.FORMAT_UNSPECIFIED:
        return DownloadFormat.ORIGINAL
    if value not in DownloadFormat.values():
        names = ", ".join(DownloadFormat.Name(known) for known in DownloadFormat.values() if known)
        raise invalid_argument(
            reasons.DOWNLOAD_FORMAT_INVALID,
            f"format {value} is not one of {names}",
            format=str(value),
        )
    return cast(DownloadFormat, value)


def validate_projection(names: list[str], requested: list[str], dataset_id: str) -> list[str]:
    known = set(names)
    for name in requested:
        if name not in known:
            raise invalid_argument(
                reasons.COLUMN_NOT_FOUND,
                f"dataset {dataset_id!r} has no column {name!r}",
                column=name,
            )
    if len(set(requested)) != len(requested):
        raise invalid_argument(reasons.COLUMN_REPEATED, "a column is requested twice")
    return requested or names
