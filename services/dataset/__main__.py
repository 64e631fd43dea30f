"""`python -m services.dataset`: run the Dataset service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio

from services.dataset.memory import keep_pandas_out, tune_allocator

keep_pandas_out()
tune_allocator()

from runtime.logs import configure_logging  # noqa: E402 - after the memory set-up above
from runtime.server import wait_for_shutdown_signal  # noqa: E402
from runtime.tracing import configure_tracing, shutdown_tracing  # noqa: E402
from services.dataset.app import DatasetApp  # noqa: E402
from services.dataset.settings import DatasetSettings  # noqa: E402


async def serve(settings: DatasetSettings) -> None:
    app = DatasetApp(settings)
    await app.start()
    try:
        await wait_for_shutdown_signal()
    finally:
        await app.stop()


def main() -> None:
    settings = DatasetSettings()
    configure_logging("dataset", settings.log_level)
    configure_tracing("dataset", settings.otlp_endpoint)
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
