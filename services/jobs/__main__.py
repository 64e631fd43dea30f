"""`python -m services.jobs`: run the Jobs service until SIGTERM or SIGINT."""

from __future__ import annotations

from runtime.app import run_process
from services.jobs.app import JobsApp
from services.jobs.settings import JobsSettings


def main() -> None:
    run_process("jobs", JobsSettings(), JobsApp)


if __name__ == "__main__":
    main()
