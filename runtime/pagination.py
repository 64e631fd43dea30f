"""Opaque page tokens for List RPCs (AIP-158), over keyset pagination.

A token holds the sort key of the last item returned and a fingerprint of the
request's filters; a token presented with other filters is refused, as AIP-158
asks. Clients must treat tokens as opaque: the encoding may change.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import invalid_argument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    size: int
    # Sort key of the last item of the previous page, or None for the first page.
    after: tuple[str, str] | None


def _fingerprint(filters: Mapping[str, object]) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_page(page_size: int, page_token: str, filters: Mapping[str, object]) -> Page:
    if page_size < 0:
        raise invalid_argument("PAGE_SIZE_INVALID", "page_size must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return Page(size=size, after=None)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after = (str(decoded["k"][0]), str(decoded["k"][1]))
        fingerprint = str(decoded["f"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise invalid_argument("PAGE_TOKEN_INVALID", "page_token is not valid") from error
    if fingerprint != _fingerprint(filters):
        raise invalid_argument(
            "PAGE_TOKEN_INVALID", "page_token was issued for a request with other filters"
        )
    return Page(size=size, after=after)


def next_page_token(last_key: tuple[str, str], filters: Mapping[str, object]) -> str:
    payload = json.dumps({"k": list(last_key), "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
