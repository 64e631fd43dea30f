"""Keeping a process's RSS close to what it uses (glibc's allocator, Arrow's pool).

Processes that move large buffers (record batches, feature columns) through
several threads see glibc's dynamic mmap threshold grow, after which big
buffers come from per-thread arenas and freed memory stays in the process;
Arrow's default pool (mimalloc) likewise keeps freed pages for reuse. The RSS
then measures history, not use. `tune_allocator()` (first thing in a process's
`__main__`, before pyarrow is imported) fixes the threshold, caps the arenas and
points Arrow at the C allocator (or the pool a service names);
`release_free_memory()` hands free heap pages back after a large piece of work.
`freeze_startup_objects()` (once a process serves) keeps the objects of its
imports out of garbage collections.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 256 * 1024
ARENAS = 2

_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None
        try:
            _libc = ctypes.CDLL(name)
        except OSError:
            return None
    return _libc


def tune_allocator(arrow_pool: str = "system") -> bool:
    """A fixed mmap threshold and two arenas when the C library is glibc; False elsewhere.

    `arrow_pool` is Arrow's pool unless the operator set ARROW_DEFAULT_MEMORY_POOL."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", arrow_pool)
    libc = _c_library()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_ARENA_MAX, ARENAS)
    )


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim); no-op elsewhere."""
    trim = getattr(_c_library(), "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


def freeze_startup_objects() -> None:
    """Once a process has started: take what is alive then out of the cyclic garbage
    collector's sight (`gc.freeze`). The modules, classes and tables of its imports
    (about 250,000 objects in the Trainer with MLflow, pandas and LightGBM, 50,000 in
    the gateway) live as long as the process, yet every full collection walked them
    all, a pause of tens of milliseconds (hundreds on a loaded machine) that stops
    every request in flight; it now walks only what was made since."""
    gc.collect()  # what startup left unreachable is freed, not frozen
    gc.freeze()
