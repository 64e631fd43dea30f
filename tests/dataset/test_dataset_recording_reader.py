"""What a conversion's reader remembers of its text is safe to look at while pyarrow reads.

pyarrow's CSV reader calls `read` on a thread of its own; an error about an over-long
row looks at `recent()` from the conversion's thread at the same time. A clean-clone
run saw `RuntimeError: deque mutated during iteration` there, and the upload of a file
with one 100 MB field was answered INTERNAL instead of FIELD_TOO_LARGE.
"""

from __future__ import annotations

import gc
import threading
import time

from services.dataset.pipe import RecordingReader

CHUNK = b"x" * 1024


class SwitchesThreadsWhenCollected:
    """Garbage whose collection lets other threads run, as a released native buffer can.

    `recent()` allocates its result while it holds an iterator over the remembered
    chunks; a collection then can hand the interpreter to the reading thread."""

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        time.sleep(0)


def test_recent_is_whole_while_another_thread_reads() -> None:
    reader = RecordingReader(lambda: CHUNK, keep_bytes=8 * len(CHUNK))
    stop = threading.Event()

    def read_on() -> None:
        while not stop.is_set():
            reader.read(len(CHUNK))

    thread = threading.Thread(target=read_on, daemon=True)
    old_threshold = gc.get_threshold()
    gc.set_threshold(5)
    failures: list[BaseException] = []
    thread.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for _ in range(10):
                SwitchesThreadsWhenCollected()
            try:
                recent = reader.recent()
            except RuntimeError as error:
                failures.append(error)
                break
            assert set(recent) <= {ord("x")}
    finally:
        stop.set()
        thread.join()
        gc.set_threshold(*old_threshold)
    assert failures == []
