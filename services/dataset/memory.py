"""Keep the process's memory flat across uploads (called first thing by `__main__`).

Ingest moves megabyte-sized buffers between threads (gRPC, the writer, the
converter, S3 part uploads). With glibc's defaults such buffers come from
per-thread arenas once the dynamic mmap threshold has grown, and freed memory
stays in the process: its RSS would creep to twice what it uses. A fixed mmap
threshold gives big buffers back to the kernel as soon as they are freed, and
fewer arenas keep small-object fragmentation down.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.abc
import os
import sys
from typing import Any

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 256 * 1024
ARENAS = 2
ARROW_POOL = "jemalloc"


def tune_allocator() -> bool:
    """Apply the settings above when the C library is glibc; False elsewhere.

    Arrow is also pointed at its jemalloc pool (it must happen before pyarrow is
    imported; an operator's ARROW_DEFAULT_MEMORY_POOL wins). Its buffers are
    megabyte-sized and short-lived (a block of text, a column of a batch, a
    compressed chunk of the original): with the C library's allocator and the
    fixed threshold each was mapped and unmapped on its own, so every byte of an
    upload was page-faulted in several times over (some 230,000 minor faults and
    0.7 s of system time for the 95 MB bench file). jemalloc reuses freed pages
    and hands them back after a few seconds (its decay): about half the faults
    and half the system time, and the RSS still comes down after an upload.
    With mimalloc (Arrow's default; per-thread heaps) the RSS of a long upload
    crept up by a hundred megabytes or more on a busy machine.
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_ARENA_MAX, ARENAS)
    )


_libc: ctypes.CDLL | None = None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim).

    Called after each upload: an upload frees most of what it allocated, but the
    small blocks left in use here and there keep their pages in the process, and
    the RSS would creep up upload after upload. No-op without glibc.
    """
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return
        _libc = ctypes.CDLL(name)
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


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
