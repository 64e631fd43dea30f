"""The one process shape (`runtime/app.py`): parts closed in reverse of opening, a
failed start undoing what it opened, close safe to call twice, background loops
stopped, and `run_process` exiting 1 with a clear line on a StartupError."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from runtime.app import App, StartupError, cancel_and_wait

REPO_ROOT = Path(__file__).resolve().parents[2]


class Recorder(App):
    def __init__(self, fail_at: str | None = None) -> None:
        super().__init__()
        self.events: list[str] = []
        self._fail_at = fail_at

    async def _open(self, stack: AsyncExitStack) -> None:
        for part in ("database", "nats", "server"):
            if part == self._fail_at:
                raise StartupError(f"{part} unreachable")
            self.events.append(f"open {part}")
            stack.callback(self.events.append, f"close {part}")


async def test_parts_close_in_reverse_order_of_opening() -> None:
    async with Recorder() as app:
        assert app.events == ["open database", "open nats", "open server"]
    assert app.events[3:] == ["close server", "close nats", "close database"]


async def test_closing_twice_closes_once() -> None:
    app = await Recorder().start()
    await app.close()
    await app.close()
    assert app.events.count("close database") == 1


async def test_a_failed_start_closes_what_it_opened() -> None:
    app = Recorder(fail_at="server")
    with pytest.raises(StartupError):
        await app.start()
    assert app.events == [
        "open database",
        "open nats",
        "close nats",
        "close database",
    ]


async def test_an_app_starts_once() -> None:
    async with Recorder() as app:
        with pytest.raises(RuntimeError, match="already started"):
            await app.start()


class Looping(App):
    async def _open(self, stack: AsyncExitStack) -> None:
        self.loop = self._background(asyncio.sleep(3600), "sleeper")


async def test_background_loops_are_cancelled_on_close() -> None:
    async with Looping() as app:
        assert not app.loop.done()
    assert app.loop.cancelled()


async def test_cancel_and_wait_outlasts_a_swallowed_cancellation() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # swallows the first cancel, as nats-py can
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done()


def test_run_process_exits_1_on_a_startup_error(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text(
        textwrap.dedent(
            """
            from contextlib import AsyncExitStack
            from runtime.app import App, StartupError, run_process
            from runtime.settings import CommonSettings

            class Failing(App):
                def __init__(self, settings: CommonSettings) -> None:
                    super().__init__()

                async def _open(self, stack: AsyncExitStack) -> None:
                    raise StartupError("cannot reach the database at db:5432")

            run_process("failing", CommonSettings(), Failing)
            """
        )
    )
    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "MODELYARD_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 1
    assert "cannot start: cannot reach the database at db:5432" in finished.stderr
