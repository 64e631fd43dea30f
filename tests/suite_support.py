"""Helpers shared by the whole suite, importable by test modules.

tests/conftest.py holds the fixtures; test modules import names from here,
never from conftest.py (pytest may import a conftest twice under different
names, and a test importing it couples itself to fixture loading order).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import httpx

DatabaseFactory = Callable[[str], str]
"""`factory(prefix)` returns the URL of a new, empty database."""


FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}


def run_python_json(code: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter (as a service's `__main__` starts) and
    return the JSON object it printed."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def wait_final(api: httpx.Client, path: str, timeout: float = 240) -> dict[str, Any]:
    """GET a job's REST path until its state is final; the job as last read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(path)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["state"] in FINAL_STATES:
            return job
        time.sleep(0.3)
    raise AssertionError(f"{path} still not final after {timeout}s")
