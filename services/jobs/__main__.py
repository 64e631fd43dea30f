"""`python -m services.jobs`: run the Jobs service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from runtime.logs import configure_logging
from runtime.server import wait_for_shutdown_signal
from runtime.tracing import configure_tracing, shutdown_tracing
from services.jobs.app import JobsService, StartupError
from services.jobs.settings import JobsSettings

logger = logging.getLogger("modelyard.jobs")


async def serve(settings: JobsSettings) -> None:
    service = JobsService(settings)
    try:
        await service.start()
        await wait_for_shutdown_signal()
    finally:
        await service.stop()


def main() -> None:
    settings = JobsSettings()
    configure_logging("jobs", settings.log_level)
    configure_tracing("jobs", settings.otlp_endpoint)
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        logger.critical("cannot start: %s", error)
        sys.exit(1)
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
