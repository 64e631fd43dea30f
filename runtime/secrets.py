"""Machine-local secrets for embedded defaults.

A bare machine runs every process with no configuration, yet no process
accepts calls on a well-known default secret: the first process to need one
writes a random token to a file only its user can read, and the others read it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path


def private_directory(path: Path) -> None:
    """Create `path` if needed; only its owner may list or enter it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def load_or_create_secret(path: Path) -> str:
    private_directory(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_when_written(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _read_when_written(path: Path) -> str:
    # Another process may have created the file and not yet written the token.
    for _ in range(200):
        token = path.read_text().strip()
        if token:
            return token
        time.sleep(0.01)
    raise RuntimeError(f"secret file {path} is empty")


def tokens_equal(presented: str, expected: str) -> bool:
    """Constant-time comparison, so response timing reveals nothing of the token."""
    return hmac.compare_digest(presented.encode(), expected.encode())
