"""Running the `modelyard` command as a user's shell would: with pipes (what a
script sees: exit code, stdout and stderr apart) or under a pseudo-terminal (what
a person sees: rich's live bars, colours and redraws)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELYARD = Path(sys.executable).parent / "modelyard"
COLUMNS = 100
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:  # what a failing assertion shows
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@dataclass
class TerminalRun:
    code: int
    raw: str  # as written to the terminal: escape sequences, carriage returns

    @property
    def lines(self) -> list[str]:
        """Every line and every redraw of a line, escape sequences removed."""
        text = ANSI.sub("", self.raw)
        return [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"exit {self.code}\n{self.text}"


class Cli:
    """Runs `modelyard` against the stack, as a user's shell would."""

    def __init__(self, url: str, token: str, cwd: Path) -> None:
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "COLUMNS": str(COLUMNS),
            "MODELYARD_URL": url,
            "MODELYARD_TOKEN": token,
        }
        self.cwd = cwd

    def __call__(self, *args: str, timeout: float = 120, **env: str) -> Run:
        done = subprocess.run(
            [str(MODELYARD), *args],
            env=self.env | env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """In the background (the caller waits for it)."""
        return subprocess.Popen(
            [str(MODELYARD), *args],
            env=self.env | env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def terminal(self, *args: str, timeout: float = 120) -> TerminalRun:
        """Under a pseudo-terminal of COLUMNS columns, stdout and stderr both on it."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
        process = subprocess.Popen(
            [str(MODELYARD), *args],
            env=self.env | {"TERM": "xterm"},
            cwd=self.cwd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
        os.close(slave)
        written = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the command has exited and closed the terminal
                    break
                if not chunk:
                    break
                written += chunk
            else:
                process.kill()
                shown = written.decode("utf-8", errors="replace")
                raise AssertionError(
                    f"modelyard {args} still running after {timeout}s; it showed:\n{shown}"
                )
        finally:
            os.close(master)
        return TerminalRun(process.wait(timeout=10), written.decode("utf-8", errors="replace"))
