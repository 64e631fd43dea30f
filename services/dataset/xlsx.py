"""XLSX workbooks: one sheet, read as a stream of rows and written out as CSV text.

The text then goes through the same conversion as an uploaded CSV (header
repair, types, dates, profile, limits), so a sheet and its CSV export give
the same dataset. Cells are written as a CSV export would: numbers as
numbers, booleans as true/false, dates as ISO 8601 (a date with no time of
day as `YYYY-MM-DD`), times of day as `HH:MM:SS`. A formula gives the value
the workbook saved with it (what Excel shows), and is missing when the file
was saved without one; error values (`#DIV/0!`, ...) are missing. Merged
cells hold their value in the top-left cell only; the others are empty.

openpyxl reads the sheet in read-only mode: the sheet's XML is parsed as a
stream, so memory does not grow with the number of rows. The archive is
checked first: a ZIP that is not a workbook is refused, and the sizes its
members declare once decompressed (which zipfile enforces while reading) are
held to the upload limit, and the table of shared strings (kept in memory) to
MAX_SHARED_STRINGS_BYTES.
"""

from __future__ import annotations

import csv
import datetime
import io
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import openpyxl
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.utils.exceptions import InvalidFileException

from runtime.errors import invalid_argument, resource_exhausted
from services.dataset import reasons
from services.dataset.convert import IngestCancelledError
from services.dataset.headers import HeaderLimits, check_column_count

MAX_SHARED_STRINGS_BYTES = 128 * 1024 * 1024
ROWS_PER_WRITE = 2048
_ERRORS = frozenset(ERROR_CODES)


def check_archive(path: Path, max_bytes: int) -> None:
    """Refuse a ZIP that is not an XLSX workbook, or one that decompresses too far."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise invalid_argument(
            reasons.XLSX_INVALID, f"the workbook cannot be opened: {str(error)[:200]}"
        ) from None
    names = {info.filename for info in infos}
    if "xl/workbook.xml" not in names or "[Content_Types].xml" not in names:
        raise invalid_argument(
            reasons.COMPRESSED_CONTENT,
            "the file is a ZIP archive, not an XLSX workbook; unzip it and upload the table inside",
        )
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise resource_exhausted(
            reasons.UPLOAD_TOO_LARGE,
            f"the workbook decompresses to {total} bytes; the limit is {max_bytes}",
            limit_bytes=str(max_bytes),
        )
    strings = sum(info.file_size for info in infos if info.filename == "xl/sharedStrings.xml")
    if strings > MAX_SHARED_STRINGS_BYTES:
        raise resource_exhausted(
            reasons.UPLOAD_TOO_LARGE,
            f"the workbook's table of shared strings is {strings} bytes; "
            f"at most {MAX_SHARED_STRINGS_BYTES} are read",
            limit_bytes=str(MAX_SHARED_STRINGS_BYTES),
        )


def _open(path: Path) -> Any:
    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as error:
        raise invalid_argument(
            reasons.XLSX_INVALID, f"the workbook cannot be read: {str(error)[:200]}"
        ) from None


def cell_text(value: object) -> str:
    """A cell as a CSV export writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value else ""
    if isinstance(value, datetime.datetime):
        if value.time() == datetime.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value.total_seconds())
    text = str(value)
    return "" if text in _ERRORS else text


class SheetText:
    """Writes one sheet of a workbook as CSV text; tells which sheet it was."""

    def __init__(self, path: Path, sheet: str, max_columns: int, max_bytes: int) -> None:
        check_archive(path, max_bytes)
        self._workbook = _open(path)
        names = list(self._workbook.sheetnames)
        if sheet and sheet not in names:
            shown = ", ".join(repr(name) for name in names[:20])
            self._workbook.close()
            raise invalid_argument(
                reasons.SHEET_NOT_FOUND,
                f"the workbook has no sheet {sheet[:100]!r}; its sheets: {shown}",
                sheet=sheet[:100],
            )
        if not names:
            self._workbook.close()
            raise invalid_argument(reasons.EMPTY_FILE, "the workbook has no sheet")
        self.sheet = sheet or names[0]
        self._worksheet = self._workbook[self.sheet]
        self._max_columns = max_columns
        self._max_bytes = max_bytes

    def write_csv(self, out: BinaryIO, cancelled: threading.Event) -> int:
        """Every row of the sheet as CSV into `out`; the number of bytes written."""
        worksheet = self._worksheet
        if worksheet.max_column is None:
            worksheet.calculate_dimension(force=True)  # no dimension saved: one scan finds it
        width = worksheet.max_column or 0
        check_column_count(width, HeaderLimits(self._max_columns, max_column_name_chars=0))
        written = 0
        try:
            for rows in _slices(worksheet.iter_rows(values_only=True), ROWS_PER_WRITE):
                if cancelled.is_set():
                    raise IngestCancelledError
                data = _csv_of(rows, width)
                written += len(data)
                if written > self._max_bytes:
                    raise resource_exhausted(
                        reasons.UPLOAD_TOO_LARGE,
                        f"the sheet's text is larger than the limit of {self._max_bytes} bytes",
                        limit_bytes=str(self._max_bytes),
                    )
                out.write(data)
        except (KeyError, ValueError, zipfile.BadZipFile) as error:
            raise invalid_argument(
                reasons.XLSX_INVALID, f"the sheet cannot be read: {str(error)[:200]}"
            ) from None
        finally:
            self._workbook.close()
        return written


def _slices(rows: Iterable[tuple[object, ...]], size: int) -> Iterable[list[tuple[object, ...]]]:
    batch: list[tuple[object, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _csv_of(rows: list[tuple[object, ...]], width: int) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        cells = [cell_text(value) for value in row[:width]]
        if not any(cells):
            continue  # an empty row: blank lines are skipped in text too
        cells.extend([""] * (width - len(cells)))
        writer.writerow(cells)
    return buffer.getvalue().encode("utf-8")
