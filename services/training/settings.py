"""The Trainer's settings: `MODELYARD_TRAINER_<FIELD>` environment variables (but
the run-duration limits, shared with Jobs: `RunDurationSettings`).

The MLflow password is a SecretStr: it is handed to the MLflow client through
its own environment variables at start and never appears in a log line, an
event or a job record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from runtime import limits
from runtime.settings import (
    ApiTokenClientSettings,
    CommonSettings,
    DatasetClientSettings,
    ListenAddress,
    MetricsAddress,
    NatsSettings,
    RunDurationSettings,
)


class TrainerSettings(
    CommonSettings,
    NatsSettings,
    DatasetClientSettings,
    RunDurationSettings,
    ApiTokenClientSettings,
):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_TRAINER_")

    listen_address: ListenAddress = "127.0.0.1:50053"
    metrics_address: MetricsAddress = "127.0.0.1:9453"
    jobs_service_address: str = Field(
        default="127.0.0.1:50052",
        description=(
            "host:port of JobsService, asked before training whether the job exists "
            "(a request for a job it does not know is refused)."
        ),
    )

    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5000", description="MLflow tracking server (basic auth)."
    )
    mlflow_username: str | None = Field(
        default=None, description="MLflow basic-auth user; no auth when unset."
    )
    mlflow_password: SecretStr | None = Field(
        default=None, description="MLflow basic-auth password. Never logged."
    )
    mlflow_experiment_name: str = Field(
        default="modelyard", description="MLflow experiment every training run goes to."
    )
    mlflow_public_url: str | None = Field(
        default=None,
        description="Base URL of the MLflow UI used in run links; the tracking URI when unset.",
    )
    registered_model_description: str = Field(
        default="LightGBM model trained by modelyard.",
        description="Description given to a registered model when the Trainer creates it.",
    )
    work_dir: Path | None = Field(
        default=None,
        description="Scratch space for model files before upload; <state_dir>/trainer when unset.",
    )
    worker_slots: int = Field(
        default=1, ge=0, le=64, description="Jobs trained at once; 0 serves TrainerService only."
    )
    role: Literal["all", "serving", "training"] = Field(
        default="all",
        description=(
            "What this Trainer does: `all` serves TrainerService and trains jobs; `serving` "
            "serves Predict, ListModels and GetModel (and the checks Jobs asks for) and "
            "consumes no jobs, whatever worker_slots says, so that scoring keeps its latency "
            "while other Trainers train; `training` trains jobs and answers only the checks "
            "Jobs asks for (ValidateTrainingParams, EstimateTraining), Predict, ListModels and "
            "GetModel being refused with TRAINER_NOT_SERVING."
        ),
    )

    def trains_jobs(self) -> bool:
        return self.role != "serving" and self.worker_slots > 0

    def serves_models(self) -> bool:
        return self.role != "training"

    ack_wait_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Ack wait of the shared consumer (set when the Trainer creates it): a job whose "
            "Trainer stops sending heartbeats for this long is redelivered."
        ),
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=limits.MAX_ATTEMPTS_LIMIT,
        description="Deliveries of a job before it fails ATTEMPTS_EXHAUSTED.",
    )
    retry_delay_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Delay before a job that hit a transient error (MLflow or Dataset down) "
        "is delivered again; each later retry of the job waits 4 times longer (5, 20, 80 s), "
        "so its attempts spread over an outage instead of being spent within seconds.",
    )
    retry_delay_max_seconds: float = Field(
        default=300.0, ge=0, description="The longest wait before a retry."
    )

    def retry_delay(self, attempt: int) -> float:
        """The wait before delivering again a job whose attempt `attempt` hit a transient
        error: it grows with the attempt, the number of attempts does not."""
        grown = self.retry_delay_seconds * 4.0 ** max(0, attempt - 1)
        return float(min(grown, self.retry_delay_max_seconds))

    num_threads: int = Field(
        default=0,
        ge=0,
        description="LightGBM threads per job, and the cap of a num_threads override; "
        "0 means the machine's CPU count.",
    )
    boosting_work_budget: float = Field(
        default=1.5e9,
        gt=0,
        description=(
            "Unless a job sets num_iterations, boosting rounds are capped at "
            "budget / (training rows x features), between 50 and 1000 (the learning rate "
            "grows as the cap shrinks), so that a default job's training time stays "
            "bounded whatever the table's size."
        ),
    )
    validation_fraction: float = Field(
        default=0.2, gt=0, lt=0.5, description="Share of rows held out for validation."
    )
    min_rows_per_class: int = Field(
        default=5, ge=2, description="A class with fewer rows fails TARGET_CLASS_TOO_SMALL."
    )
    max_classes: int = Field(
        default=100, ge=3, description="A target with more classes fails TARGET_TOO_MANY_CLASSES."
    )
    progress_interval_seconds: float = Field(
        default=0.5, gt=0, description="At most one progress event per this interval."
    )
    memory_limit_mib: int = Field(
        default=0,
        ge=0,
        description=(
            "Peak memory a job may be expected to need: a job whose estimate exceeds it is "
            "refused at create (TRAINING_MEMORY_LIMIT_EXCEEDED); 0 means the machine's memory."
        ),
    )
    dask_scheduler_address: str = Field(
        default="",
        description=(
            "Dask scheduler (tcp://host:8786) for distributed training; empty: every job "
            "trains in the Trainer."
        ),
    )
    dask_min_rows: int = Field(
        default=10_000_000,
        ge=1,
        description=(
            "With a Dask scheduler set, datasets of at least this many rows train on Dask; "
            "smaller ones in the Trainer."
        ),
    )
    dask_connect_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a job waits for the Dask scheduler before it is retried.",
    )
    dask_network_timeout_minutes: int = Field(
        default=2,
        ge=1,
        description=(
            "LightGBM's network time-out on Dask (minutes, its smallest unit): how long "
            "the workers wait for a lost peer before the job is retried (DASK_WORKER_LOST); "
            "raise it when a partition can take longer than this between two rounds."
        ),
    )
    alias_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Predict by alias serves the version the alias last named and looks it up again "
            "in the background once this old: a moved champion is served within about this "
            "long, and no Predict waits on MLflow after the first."
        ),
    )
    predict_cache_size: int = Field(
        default=8, ge=1, description="Loaded model versions kept in memory for Predict."
    )
    max_predict_rows: int = Field(
        default=10_000, ge=1, description="Rows accepted by one Predict call."
    )
    nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description=(
            "CPU priority the Trainer process lowers itself to at start (Unix nice, added to "
            "the inherited one): set it on a `training` Trainer that shares CPUs with a "
            "`serving` one, so that Predict keeps its latency while jobs train."
        ),
    )

    def resolved_work_dir(self) -> Path:
        return self.work_dir or self.state_dir / "trainer"

    def resolved_num_threads(self) -> int:
        return self.num_threads or os.cpu_count() or 1

    def resolved_memory_limit_bytes(self) -> int:
        if self.memory_limit_mib:
            return self.memory_limit_mib * 1024 * 1024
        return int(psutil.virtual_memory().total)

    def mlflow_ui_url(self) -> str:
        return (self.mlflow_public_url or self.mlflow_tracking_uri).rstrip("/")
