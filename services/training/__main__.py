"""`python -m services.training`: TrainerService and, with worker slots, the training worker,
until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import warnings

from runtime.app import run_process
from services.training.app import TrainerApp
from services.training.settings import TrainerSettings
from services.training.tracking.credentials import redact_logs, redactor


def keep_secrets_out_of_logs(settings: TrainerSettings) -> None:
    """Every log line is scrubbed of the MLflow password and the service token; library
    warnings go through logging (and so through the scrubbing) too."""
    redact_logs(redactor(settings))
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightgbm")


def main() -> None:
    run_process("trainer", TrainerSettings(), TrainerApp, prepare=keep_secrets_out_of_logs)


if __name__ == "__main__":
    main()
