"""`python -m services.training`: TrainerService and, with worker slots, the training worker,
until SIGTERM or SIGINT."""

from __future__ import annotations

from runtime.memory import tune_allocator

# Before pyarrow is imported: a job's peak RSS is then what it uses (runtime/memory.py).
tune_allocator()

import logging  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

from runtime.app import run_process  # noqa: E402
from services.training.app import TrainerApp  # noqa: E402
from services.training.settings import TrainerSettings  # noqa: E402
from services.training.tracking.credentials import redact_logs, redactor  # noqa: E402


def keep_secrets_out_of_logs(settings: TrainerSettings) -> None:
    """Every log line is scrubbed of the MLflow password and the service token; library
    warnings go through logging (and so through the scrubbing) too."""
    redact_logs(redactor(settings))
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightgbm")


def lower_cpu_priority(settings: TrainerSettings) -> None:
    """`nice` before any thread starts: every thread (LightGBM's OpenMP ones included)
    inherits it, so training yields the CPU to Predict on a shared node."""
    if settings.nice:
        os.nice(settings.nice)


def prepare(settings: TrainerSettings) -> None:
    lower_cpu_priority(settings)
    keep_secrets_out_of_logs(settings)


def main() -> None:
    run_process("trainer", TrainerSettings(), TrainerApp, prepare=prepare)


if __name__ == "__main__":
    main()
