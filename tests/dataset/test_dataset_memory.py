"""`services.dataset.memory`: the allocator set-up `python -m services.dataset` starts
with. Run in a fresh interpreter each, as the service's `__main__` runs it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.suite_support import run_python_json


def _has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


@pytest.mark.skipif(not _has_jemalloc(), reason="this pyarrow build has no jemalloc pool")
def test_arrow_buffers_come_from_jemalloc() -> None:
    """Arrow's megabyte buffers reuse freed pages instead of a fresh mapping each
    (half the page faults of an upload); glibc keeps its fixed threshold."""
    result = run_python_json(
        """
        import json, os
        os.environ.pop("ARROW_DEFAULT_MEMORY_POOL", None)
        from services.dataset.memory import tune_allocator
        tuned = tune_allocator()
        import pyarrow
        print(json.dumps({"tuned": tuned, "pool": pyarrow.default_memory_pool().backend_name}))
        """
    )
    assert result == {"tuned": True, "pool": "jemalloc"}


def test_an_operators_arrow_pool_wins() -> None:
    result = run_python_json(
        """
        import json, os
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        from services.dataset.memory import tune_allocator
        tune_allocator()
        import pyarrow
        print(json.dumps({"pool": pyarrow.default_memory_pool().backend_name}))
        """
    )
    assert result == {"pool": "system"}
