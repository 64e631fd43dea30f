"""Keep the process's memory flat across uploads (called first thing by `__main__`).

Ingest moves megabyte-sized buffers between threads (gRPC, the writer, the
converter, S3 part uploads). With glibc's defaults such buffers come from
per-thread arenas once the dynamic mmap threshold has grown, and freed memory
stays in the process: its RSS would creep to twice what it uses. A fixed mmap
threshold gives big buffers back to the kernel as soon as they are freed, and
fewer arenas keep small-object fragmentation down: runtime/memory.py does that
for every service; this module picks the Dataset service's Arrow pool and keeps
pandas out.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

from runtime import memory

ARROW_POOL = "jemalloc"


def tune_allocator() -> bool:
    """runtime.memory's glibc settings, with Arrow on its jemalloc pool (before
    pyarrow is imported; an operator's ARROW_DEFAULT_MEMORY_POOL wins).

    Arrow's buffers here are megabyte-sized and short-lived (a block of text, a
    column of a batch, a compressed chunk of the original): with the C library's
    allocator and the fixed threshold each was mapped and unmapped on its own, so
    every byte of an upload was page-faulted in several times over (some 230,000
    minor faults and 0.7 s of system time for the 95 MB bench file). jemalloc
    reuses freed pages and hands them back after a few seconds (its decay): about
    half the faults and half the system time, and the RSS still comes down after an
    upload. With mimalloc (Arrow's default; per-thread heaps) the RSS of a long
    upload crept up by a hundred megabytes or more on a busy machine.
    """
    return memory.tune_allocator(ARROW_POOL)


class _WithoutPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError("pandas is kept out of the Dataset service", name=fullname)
        return None


def keep_pandas_out() -> None:
    """The service never uses pandas, but pyarrow imports it on first use when it is
    installed: ~40 MB of RSS for nothing. Make it unavailable to this process."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
