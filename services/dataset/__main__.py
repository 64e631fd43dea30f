"""`python -m services.dataset`: run the Dataset service until SIGTERM or SIGINT."""

from __future__ import annotations

from services.dataset.memory import keep_pandas_out, tune_allocator

keep_pandas_out()
tune_allocator()

from runtime.app import run_process  # noqa: E402 - after the memory set-up above
from services.dataset.app import DatasetApp  # noqa: E402
from services.dataset.settings import DatasetSettings  # noqa: E402


def main() -> None:
    run_process("dataset", DatasetSettings(), DatasetApp)


if __name__ == "__main__":
    main()
