"""Dates and times written the common non-ISO ways: `25/03/2024`, `3/25/2024 14:30`, ...

ISO 8601 is read by the CSV reader itself. This module recognizes a day, a
month and a four-digit year separated by `/`, `-` or `.`, in either order,
optionally followed by a time `H:M` or `H:M:S`, and converts such text to
`date32` (no time) or `timestamp[us]`, vectorized (no per-row Python).

The confidence rule: a text column is a DATE or TIMESTAMP column only when
**every** non-missing value is a valid date in **one** pattern (same
separator, same time part; days checked against their month, leap years
included). Day-first and month-first are told apart by evidence: a first
number above 12 can only be a day, a second number above 12 only a day. When
no value in the column settles it (every number is 12 or less), the column is
read day-first (`%d/%m/%Y`), the order most of the world writes; the profile's
`date_format` says which order was used. A column with evidence for both
orders is text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

SEPARATORS = ("/", "-", ".")
_TIMES = {
    "": "",
    r" (?P<h>\d{1,2}):(?P<mi>\d{2})": " %H:%M",
    r" (?P<h>\d{1,2}):(?P<mi>\d{2}):(?P<s>\d{2})": " %H:%M:%S",
}


@dataclass(frozen=True)
class DatePattern:
    """One way of writing dates: separator, order, time part."""

    separator: str
    day_first: bool
    time: str  # a key of _TIMES

    @property
    def regex(self) -> str:
        sep = "\\" + self.separator
        return rf"^\s*(?P<a>\d{{1,2}}){sep}(?P<b>\d{{1,2}}){sep}(?P<y>\d{{4}}){self.time}\s*$"

    @property
    def strftime(self) -> str:
        first, second = ("%d", "%m") if self.day_first else ("%m", "%d")
        sep = self.separator
        return f"{first}{sep}{second}{sep}%Y{_TIMES[self.time]}"

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.date32() if not self.time else pa.timestamp("us")


ALL_PATTERNS = [
    DatePattern(separator, day_first, time)
    for separator in SEPARATORS
    for time in _TIMES
    for day_first in (True, False)
]


class InvalidDateError(ValueError):
    """A value does not read as a date in the pattern."""


def parse(values: pa.Array, pattern: DatePattern) -> pa.Array:
    """`values` (text, nulls allowed) as dates or timestamps; raises InvalidDateError."""
    present = pc.is_valid(values)
    text = pc.drop_null(values)
    if len(text) and not pc.all(pc.match_substring_regex(text, pattern.regex)).as_py():
        raise InvalidDateError(pattern.strftime)
    parsed = _to_numpy(text, pattern)
    if len(text) == len(values):
        return pa.array(parsed, type=pattern.arrow_type)
    out = np.zeros(len(values), dtype=parsed.dtype)
    mask = present.to_numpy(zero_copy_only=False)
    out[mask] = parsed
    return pa.array(out, type=pattern.arrow_type, mask=~mask)


def _numbers(parts: pa.StructArray, name: str) -> npt.NDArray[np.int64]:
    return np.asarray(pc.cast(parts.field(name), pa.int64()).to_numpy(zero_copy_only=False))


def _to_numpy(text: pa.Array, pattern: DatePattern) -> npt.NDArray[Any]:
    if len(text) == 0:
        unit = "D" if not pattern.time else "us"
        return np.zeros(0, dtype=f"datetime64[{unit}]")
    parts = pc.extract_regex(text, pattern.regex)
    first, second, year = _numbers(parts, "a"), _numbers(parts, "b"), _numbers(parts, "y")
    day, month = (first, second) if pattern.day_first else (second, first)
    if ((month < 1) | (month > 12) | (day < 1)).any():
        raise InvalidDateError(pattern.strftime)
    months = (year - 1970) * 12 + (month - 1)
    month_start = months.astype("datetime64[M]")
    days = month_start.astype("datetime64[D]") + (day - 1)
    if (days.astype("datetime64[M]") != month_start).any():
        raise InvalidDateError(pattern.strftime)  # 31/02, 29/02 of a common year
    if not pattern.time:
        return days
    hours, minutes = _numbers(parts, "h"), _numbers(parts, "mi")
    seconds = _numbers(parts, "s") if "(?P<s>" in pattern.time else np.zeros_like(hours)
    if ((hours > 23) | (minutes > 59) | (seconds > 59)).any():
        raise InvalidDateError(pattern.strftime)
    offset = (hours * 3600 + minutes * 60 + seconds) * 1_000_000
    moments: npt.NDArray[Any] = days.astype("datetime64[us]") + offset.astype("timedelta64[us]")
    return moments


class DateCandidates:
    """The patterns every value of a text column seen so far reads in."""

    def __init__(self) -> None:
        self.patterns = list(ALL_PATTERNS)
        self.seen = False

    def update(self, values: pa.Array) -> None:
        """Narrow the patterns to those every one of `values` (nulls ignored) reads in."""
        text = pc.drop_null(values)
        if len(text) == 0 or not self.patterns:
            return
        self.seen = True
        if not looks_like_dates(text):
            self.patterns = []  # every value must be a date: one that is not settles it
            return
        kept = []
        for pattern in self.patterns:
            try:
                parse(text, pattern)
            except (InvalidDateError, pa.ArrowInvalid):
                continue
            kept.append(pattern)
        self.patterns = kept

    def best(self) -> DatePattern | None:
        """The pattern of the column, day-first when both orders read every value."""
        if not self.seen or not self.patterns:
            return None
        # Several separators or time parts cannot all match one value: one pattern
        # family is left, in one or both orders.
        day_first = [pattern for pattern in self.patterns if pattern.day_first]
        return day_first[0] if day_first else self.patterns[0]


def looks_like_dates(values: pa.Array) -> bool:
    """A cheap pre-check: the first value has a separator between digits."""
    text = pc.drop_null(values)
    if len(text) == 0:
        return False
    first = text[0].as_py()
    return (
        isinstance(first, str)
        and any(sep in first for sep in SEPARATORS)
        and (first.strip()[:1].isdigit())
    )


def detect(values: pa.Array) -> DatePattern | None:
    """The date pattern all of `values` read in, or None."""
    if not looks_like_dates(values):
        return None
    candidates = DateCandidates()
    candidates.update(values)
    return candidates.best()


def iso_or_pattern(pattern: DatePattern | None) -> str:
    return pattern.strftime if pattern is not None else "ISO 8601"
