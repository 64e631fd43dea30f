"""Column names as people's files have them, made usable, and the delimiter of a text.

A header is repaired, never refused: a blank name becomes `unnamed_<i>` (the
column's 0-based position, as pandas does), a repeated name gets `_2`, `_3`,
... and a trailing delimiter that makes an unnamed last column with no value in
any row drops that column. Every change is recorded (`HeaderRepair`) so the
user sees what was done. Generated names never take a name the header already
uses.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.dataset.v1 import dataset_pb2
from runtime.errors import invalid_argument, resource_exhausted
from services.dataset import reasons

Reason = dataset_pb2.HeaderRepair.Reason
ERROR_EXCERPT_CHARS = 80
# Delimiters tried when none is given, in order of preference on a tie.
CANDIDATE_DELIMITERS = (",", "\t", ";", "|")
SNIFF_TEXT_BYTES = 64 * 1024
SNIFF_RECORDS = 50


@dataclass(frozen=True)
class HeaderLimits:
    max_columns: int
    max_column_name_chars: int


@dataclass
class Header:
    """The columns of a table as uploaded (`source_names`) and as the dataset names them."""

    source_names: list[str]
    names: list[str]
    repairs: list[dataset_pb2.HeaderRepair] = field(default_factory=list)
    # Position of a blank-named last column that is dropped when it holds no value.
    trailing_blank: int | None = None

    def drop_trailing(self) -> Header:
        """This header without its trailing blank column (which held no value)."""
        assert self.trailing_blank is not None
        index = self.trailing_blank
        repairs = [item for item in self.repairs if item.column_index != index + 1]
        repairs.append(
            dataset_pb2.HeaderRepair(
                column_index=index + 1,
                original_name=self.source_names[index],
                new_name="",
                reason=Reason.REASON_EMPTY_TRAILING_COLUMN,
            )
        )
        return Header(self.source_names, self.names[:index], repairs, None)

    @property
    def kept(self) -> int:
        """How many source columns the dataset keeps (the first ones)."""
        return len(self.names)


def check_column_count(count: int, limits: HeaderLimits) -> None:
    if count > limits.max_columns:
        raise resource_exhausted(
            reasons.TOO_MANY_COLUMNS,
            f"the file has {count} columns; at most {limits.max_columns} are accepted",
            columns=str(count),
            limit=str(limits.max_columns),
        )


def repair_header(source_names: Sequence[str], has_header: bool, limits: HeaderLimits) -> Header:
    """Unique, non-blank names for the columns, and the repairs that made them."""
    check_column_count(len(source_names), limits)
    if not has_header:
        generated = [f"column_{index}" for index in range(1, len(source_names) + 1)]
        return Header(list(source_names), generated)
    for index, name in enumerate(source_names, start=1):
        if len(name) > limits.max_column_name_chars:
            raise invalid_argument(
                reasons.COLUMN_NAME_TOO_LONG,
                f"column {index}'s name is longer than {limits.max_column_name_chars} characters",
                column_index=str(index),
            )
    taken = {name for name in source_names if name.strip()}
    used: set[str] = set()
    names: list[str] = []
    repairs: list[dataset_pb2.HeaderRepair] = []
    for index, original in enumerate(source_names):
        if not original.strip():
            name, reason = _unique(f"unnamed_{index}", taken | used), Reason.REASON_BLANK_NAME
        elif original in used:
            name, reason = _unique(original, taken | used), Reason.REASON_DUPLICATE_NAME
        else:
            name, reason = original, Reason.REASON_UNSPECIFIED
        used.add(name)
        names.append(name)
        if reason != Reason.REASON_UNSPECIFIED:
            repairs.append(
                dataset_pb2.HeaderRepair(
                    column_index=index + 1, original_name=original, new_name=name, reason=reason
                )
            )
    last = len(source_names) - 1
    trailing = last if last > 0 and not source_names[last].strip() else None
    return Header(list(source_names), names, repairs, trailing)


def _unique(base: str, taken: set[str]) -> str:
    """`base` if free, else `base_2`, `base_3`, ... (a generated blank name starts at `_2` too)."""
    if base not in taken:
        return base
    suffix = 2
    while f"{base}_{suffix}" in taken:
        suffix += 1
    return f"{base}_{suffix}"


# -- the delimiter -------------------------------------------------------------------------


def detect_delimiter(head: bytes, encoding: str) -> str:
    """The delimiter of a text whose first bytes are `head`.

    Each candidate splits the first records (quotes respected); the ones that
    give every record the same number of fields, more than one, qualify, and
    the one giving the most fields wins (earlier candidates on a tie). Comma
    when none qualifies: a one-column file, or text too irregular to tell.
    """
    text = head.decode("utf-8" if encoding == "utf8" else "cp1252", errors="replace")
    if len(head) >= SNIFF_TEXT_BYTES:
        text = text[: max(text.rfind("\n"), 0)]  # the last line may be cut
    best, best_fields = ",", 1
    for delimiter in CANDIDATE_DELIMITERS:
        counts = _field_counts(text, delimiter)
        if counts and len(set(counts)) == 1 and counts[0] > best_fields:
            best, best_fields = delimiter, counts[0]
    return best


def _field_counts(text: str, delimiter: str) -> list[int]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    counts: list[int] = []
    try:
        for record in reader:
            if not record or record == [""]:
                continue  # blank lines are skipped by the reader too
            counts.append(len(record))
            if len(counts) >= SNIFF_RECORDS:
                break
    except csv.Error:
        return []
    return counts
