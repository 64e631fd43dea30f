"""Helpers shared by the whole suite, importable by test modules.

tests/conftest.py holds the fixtures; test modules import names from here,
never from conftest.py (pytest may import a conftest twice under different
names, and a test importing it couples itself to fixture loading order).
"""

from __future__ import annotations

from collections.abc import Callable

DatabaseFactory = Callable[[str], str]
"""`factory(prefix)` returns the URL of a new, empty database."""
