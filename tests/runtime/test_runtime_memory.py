"""`runtime.memory`: the allocator tuning every process starts with, and handing free
heap pages back. Run in a fresh interpreter each, as a service's `__main__` runs them."""

from __future__ import annotations

from tests.suite_support import run_python_json

MiB = 1024 * 1024


def test_tuning_points_arrow_at_the_c_allocator_and_takes_on_glibc() -> None:
    result = run_python_json(
        """
        import json, os
        from runtime.memory import tune_allocator
        tuned = tune_allocator()
        import pyarrow
        print(json.dumps({"tuned": tuned, "pool": pyarrow.default_memory_pool().backend_name}))
        """
    )
    assert result == {"tuned": True, "pool": "system"}


def test_an_explicit_arrow_pool_is_left_as_the_operator_set_it() -> None:
    result = run_python_json(
        """
        import json, os
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
        from runtime.memory import tune_allocator
        tune_allocator()
        print(json.dumps({"pool": os.environ["ARROW_DEFAULT_MEMORY_POOL"]}))
        """
    )
    assert result == {"pool": "jemalloc"}


def test_freed_heap_pages_go_back_to_the_kernel() -> None:
    """Half of many small buffers freed leaves holes the heap cannot shrink past on its
    own; release_free_memory hands those pages back, and the RSS shows it."""
    result = run_python_json(
        """
        import json, psutil
        from runtime.memory import release_free_memory, tune_allocator
        tune_allocator()
        process = psutil.Process()
        buffers = [bytearray(100 * 1024) for _ in range(3000)]  # below the mmap threshold
        del buffers[::2]
        held = process.memory_info().rss
        release_free_memory()
        print(json.dumps({"held": held, "after": process.memory_info().rss}))
        """
    )
    held, after = int(str(result["held"])), int(str(result["after"]))
    assert held - after > 100 * MiB, (held / MiB, after / MiB)


def test_frozen_startup_objects_are_out_of_a_full_collections_walk() -> None:
    """After startup (here: pandas and the gateway imported), a full collection walks
    only what was made since, not every object of the imports."""
    found = run_python_json(
        """
        import gc, json, time
        import pandas, gateway.app
        from runtime.memory import freeze_startup_objects
        tracked = len(gc.get_objects())
        freeze_startup_objects()
        made_since = [[index] for index in range(1000)]
        print(json.dumps({
            "tracked": tracked,
            "frozen": gc.get_freeze_count(),
            "walked": len(gc.get_objects()),
        }))
        """
    )
    tracked, frozen, walked = (int(str(found[key])) for key in ("tracked", "frozen", "walked"))
    assert frozen >= 0.9 * tracked
    assert 1000 <= walked < tracked / 10
