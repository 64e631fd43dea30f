"""Opaque page tokens for List RPCs (AIP-158), over keyset pagination.

A list is sorted on a key, most often (create time, id), newest first. A token
holds the key of the last item returned and a fingerprint of the request's
filters; a token presented with other filters is refused, as AIP-158 asks.
Clients must treat tokens as opaque: the encoding may change.

A List RPC is three steps, the same in every service:

    page = parse_page(request.page_size, request.page_token, filters)
    rows = await repository.list_page(page, ...)   # up to page.size + 1 rows
    items, token = page_tail(rows, page, key=lambda row: (row.create_time, row.id), filters)

A list kept by another system (the MLflow registry) has tokens of its own; it
still takes its size from `page_size`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from runtime.errors import invalid_argument
from runtime.reasons import PAGE_SIZE_INVALID, PAGE_TOKEN_INVALID

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    size: int
    # Key of the last item of the previous page, in text, or None for the first page.
    after: tuple[str, str] | None

    def after_time(self) -> tuple[datetime, str] | None:
        """`after` of a list keyed by (create time, id); a token whose key is not a time
        was not issued by that list: PAGE_TOKEN_INVALID."""
        if self.after is None:
            return None
        try:
            return datetime.fromisoformat(self.after[0]), self.after[1]
        except ValueError as error:
            raise invalid_argument(PAGE_TOKEN_INVALID, "page_token is not valid") from error

    def after_number(self) -> int | None:
        """`after` of a list keyed by a number (versions); PAGE_TOKEN_INVALID otherwise."""
        if self.after is None:
            return None
        try:
            return int(self.after[0])
        except ValueError as error:
            raise invalid_argument(PAGE_TOKEN_INVALID, "page_token is not valid") from error


def _fingerprint(filters: Mapping[str, object]) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def checked_page_size(requested: int) -> int:
    """The size of a page: the default for 0, at most MAX_PAGE_SIZE; negative is refused."""
    if requested < 0:
        raise invalid_argument(PAGE_SIZE_INVALID, "page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def parse_page(page_size: int, page_token: str, filters: Mapping[str, object]) -> Page:
    size = checked_page_size(page_size)
    if not page_token:
        return Page(size=size, after=None)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after = (str(decoded["k"][0]), str(decoded["k"][1]))
        fingerprint = str(decoded["f"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise invalid_argument(PAGE_TOKEN_INVALID, "page_token is not valid") from error
    if fingerprint != _fingerprint(filters):
        raise invalid_argument(
            PAGE_TOKEN_INVALID, "page_token was issued for a request with other filters"
        )
    return Page(size=size, after=after)


def next_page_token(last_key: tuple[str, str], filters: Mapping[str, object]) -> str:
    payload = json.dumps({"k": list(last_key), "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def page_tail(
    rows: Sequence[T],
    page: Page,
    key: Callable[[T], tuple[datetime | int, str]],
    filters: Mapping[str, object],
) -> tuple[list[T], str]:
    """The page's items and the token of the next page ("" when this is the last).

    `rows` is what the store returned for `page`: up to `page.size + 1` rows, the
    extra one only telling that there is more. `key` gives an item's sort key: a
    time (read back with `Page.after_time`) or a number (`Page.after_number`), and
    an id breaking ties."""
    items = list(rows[: page.size])
    if len(rows) <= page.size:
        return items, ""
    first, identifier = key(items[-1])
    return items, next_page_token((_key_text(first), identifier), filters)


def _key_text(value: datetime | int) -> str:
    if isinstance(value, datetime):
        # SQLite hands back naive times; every stored time is UTC.
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.isoformat()
    return str(value)
