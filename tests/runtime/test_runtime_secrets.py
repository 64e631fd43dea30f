"""Machine-local secrets (`runtime/secrets.py`): made once, readable by their owner
only, the same for every process that asks."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime.secrets import load_or_create_secret, tokens_equal


def test_a_secret_is_made_once_with_owner_only_access(tmp_path: Path) -> None:
    path = tmp_path / "state" / "service-token"
    first = load_or_create_secret(path)
    assert len(first) >= 32
    assert load_or_create_secret(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_processes_asking_at_once_get_the_same_secret(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: load_or_create_secret(path), range(32)))
    assert len(tokens) == 1


def test_token_comparison() -> None:
    assert tokens_equal("abc", "abc")
    assert not tokens_equal("abc", "abd")
    assert not tokens_equal("", "abc")


def test_a_generated_secret_and_its_directory_are_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "service-token"
    load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
