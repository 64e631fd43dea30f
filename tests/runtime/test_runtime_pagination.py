"""Page tokens (`runtime/pagination.py`): opaque, tied to the request's filters, and
the page tail every List RPC shares."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from runtime.errors import ServiceError
from runtime.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    checked_page_size,
    next_page_token,
    page_tail,
    parse_page,
)

FILTERS = {"state": 3, "dataset_id": ""}
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Row:
    create_time: datetime
    row_id: str


def rows(count: int) -> list[Row]:
    return [Row(START - timedelta(seconds=n), f"r{n:03d}") for n in range(count)]


def reason_of(call: object) -> str:
    with pytest.raises(ServiceError) as refused:
        call()  # type: ignore[operator]
    return refused.value.reason


@pytest.mark.parametrize(
    ("asked", "given"), [(0, DEFAULT_PAGE_SIZE), (7, 7), (MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE)]
)
def test_page_sizes(asked: int, given: int) -> None:
    assert checked_page_size(asked) == given
    assert parse_page(asked, "", FILTERS).size == given


def test_a_negative_page_size_is_refused() -> None:
    assert reason_of(lambda: parse_page(-1, "", FILTERS)) == "PAGE_SIZE_INVALID"


def test_walking_pages_returns_every_row_once() -> None:
    table = rows(7)
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = parse_page(3, token, FILTERS)
        after = page.after_time()
        remaining = [r for r in table if after is None or (r.create_time, r.row_id) < after]
        items, token = page_tail(
            remaining[: page.size + 1], page, lambda r: (r.create_time, r.row_id), FILTERS
        )
        seen += [item.row_id for item in items]
        if not token:
            break
    assert seen == [row.row_id for row in table]


def test_the_last_page_has_no_token() -> None:
    page = parse_page(5, "", FILTERS)
    items, token = page_tail(rows(5), page, lambda r: (r.create_time, r.row_id), FILTERS)
    assert (len(items), token) == (5, "")


def test_naive_times_are_taken_as_utc() -> None:
    """SQLite hands back naive datetimes: the token must equal the aware one's."""
    page = parse_page(1, "", FILTERS)
    naive = [Row(START.replace(tzinfo=None), "a"), Row(START, "b")]
    aware = [Row(START, "a"), Row(START, "b")]
    key = lambda r: (r.create_time, r.row_id)  # noqa: E731
    assert page_tail(naive, page, key, FILTERS)[1] == page_tail(aware, page, key, FILTERS)[1]


def test_a_token_is_refused_with_other_filters() -> None:
    token = next_page_token((START.isoformat(), "r1"), FILTERS)
    assert reason_of(lambda: parse_page(10, token, {**FILTERS, "state": 4})) == (
        "PAGE_TOKEN_INVALID"
    )


def forged(key: object) -> str:
    payload = json.dumps({"k": key, "f": "0"}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


@pytest.mark.parametrize("token", ["not base64 !", "e30", forged([]), "x" * 10_000])
def test_malformed_tokens_are_invalid_argument(token: str) -> None:
    assert reason_of(lambda: parse_page(10, token, FILTERS)) == "PAGE_TOKEN_INVALID"


def test_a_token_of_another_kind_of_list_is_invalid_argument() -> None:
    """A version list's token presented to a time-keyed list, and the other way round."""
    by_version = parse_page(10, next_page_token(("7", ""), FILTERS), FILTERS)
    by_time = parse_page(10, next_page_token((START.isoformat(), "r1"), FILTERS), FILTERS)
    assert by_version.after_number() == 7
    assert by_time.after_time() == (START, "r1")
    assert reason_of(by_version.after_time) == "PAGE_TOKEN_INVALID"
    assert reason_of(by_time.after_number) == "PAGE_TOKEN_INVALID"


def test_a_numeric_key_makes_a_numeric_token() -> None:
    page = parse_page(1, "", FILTERS)
    versions = [Row(START, "v3"), Row(START, "v2")]
    _, token = page_tail(versions, page, lambda r: (int(r.row_id[1:]), ""), FILTERS)
    assert parse_page(1, token, FILTERS).after_number() == 3
