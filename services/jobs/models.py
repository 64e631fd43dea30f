"""The Jobs service's tables (its own database; no other service reads them).

`training_jobs` holds one row per job: the request as columns, the outputs the
Trainer reported as serialized protobuf (they are only ever read back whole, so
a job converts to its `TrainingJob` message without any join). `version` is
bumped by every change, so concurrent writers (two replicas, the watchdog, a
cancel) update a job with a conditional UPDATE and never interleave.

Scoring jobs are rows of the same table, of `kind` `scoring`: they share the
lifecycle columns (state, attempt, times, deadline, error) and so the outbox,
relay, events consumer, watchdog and watches of training jobs; what only a
scoring job has is the serialized `ScoringJob` in `scoring`.

`jobs_outbox` holds what must reach NATS, written in the same transaction as
the change that produced it and published by the relay (see outbox.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime import limits

ID_LENGTH = 64
REQUEST_ID_LENGTH = limits.MAX_REQUEST_ID_CHARS


class Base(DeclarativeBase):
    pass


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both PostgreSQL (timestamptz) and SQLite
    (naive text, always UTC), so comparisons and page tokens agree everywhere."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# An autoincrementing 64-bit key on PostgreSQL; SQLite autoincrements only INTEGER keys.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class TrainingJobRow(Base):
    __tablename__ = "training_jobs"

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH))
    dataset_id: Mapped[str] = mapped_column(String(ID_LENGTH * 2))
    target_column: Mapped[str] = mapped_column(Text)
    task: Mapped[int] = mapped_column(SmallInteger)
    params: Mapped[str] = mapped_column(Text, doc="JSON object of string to string")
    registered_model_name: Mapped[str] = mapped_column(String(limits.MAX_MODEL_NAME_CHARS))
    max_run_duration_seconds: Mapped[float] = mapped_column(Float)

    state: Mapped[int] = mapped_column(SmallInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)

    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # start_time + max_run_duration while RUNNING or CANCELLING, else NULL: the watchdog's key.
    run_deadline: Mapped[datetime | None] = mapped_column(UtcDateTime)

    # Serialized protobuf messages (google.rpc.Status, TaskDetection, ...), NULL when unset.
    error: Mapped[bytes | None] = mapped_column(LargeBinary)
    task_detection: Mapped[bytes | None] = mapped_column(LargeBinary)
    progress: Mapped[bytes | None] = mapped_column(LargeBinary)
    summary: Mapped[bytes | None] = mapped_column(LargeBinary)
    mlflow: Mapped[bytes | None] = mapped_column(LargeBinary)
    metrics: Mapped[str | None] = mapped_column(Text, doc="JSON object of string to number")
    # The request's TrainingSearch (immutable) and, for a replay, its Replay (serialized).
    search: Mapped[bytes | None] = mapped_column(LargeBinary)
    replay: Mapped[bytes | None] = mapped_column(LargeBinary)
    # `training` or `scoring`; a scoring job's whole ScoringJob, serialized.
    kind: Mapped[str] = mapped_column(String(16), server_default="training")
    scoring: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The project the job belongs to (`default` for jobs made before projects).
    project: Mapped[str] = mapped_column(String(ID_LENGTH), server_default="default")

    __table_args__ = (
        Index("uq_training_jobs_request_id", "request_id", unique=True),
        # ListTrainingJobs: newest first, optionally by state or dataset (keyset pagination).
        Index("ix_training_jobs_create_time", "create_time", "job_id"),
        Index("ix_training_jobs_state_create_time", "state", "create_time", "job_id"),
        Index("ix_training_jobs_dataset_create_time", "dataset_id", "create_time", "job_id"),
        Index("ix_training_jobs_run_deadline", "run_deadline"),
        Index("ix_training_jobs_kind_create_time", "kind", "create_time", "job_id"),
        Index("ix_training_jobs_project_create_time", "project", "create_time", "job_id"),
    )


class OutboxRow(Base):
    __tablename__ = "jobs_outbox"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    # training_request | job_event | cancel_flag (see outbox.OutboxKind)
    kind: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    # Nats-Msg-Id of the message: JetStream drops a re-publish within its duplicate window.
    msg_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    published_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "ix_jobs_outbox_unpublished",
            "id",
            postgresql_where=text("published_time IS NULL"),
            sqlite_where=text("published_time IS NULL"),
        ),
        Index(
            "ix_jobs_outbox_published_time",
            "published_time",
            postgresql_where=text("published_time IS NOT NULL"),
            sqlite_where=text("published_time IS NOT NULL"),
        ),
    )


class TrialRow(Base):
    """One trial of a searching job, as the Trainer reported it (ListTrials reads
    these, never MLflow). Written once per (job, attempt, number)."""

    __tablename__ = "training_trials"

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The serialized modelyard.jobs.v1.Trial.
    trial: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ReportRow(Base):
    """A succeeded job's evaluation report, as the Trainer sent it with its `succeeded`
    event (GetTrainingJobReport reads it, never MLflow). Written once per job."""

    __tablename__ = "training_reports"

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    # The serialized modelyard.jobs.v1.EvaluationReport (its charts included).
    report: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ProjectRow(Base):
    """A project: the scope of datasets, jobs, models and API tokens. `default` is made
    by the migration that made this table, so a stack works with no setup."""

    __tablename__ = "projects"

    project_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ApiTokenRow(Base):
    """An API token of a project. Only the SHA-256 of its secret is kept: a token is looked
    up by its id (the part of `myk_<id>_<secret>` before the secret) and the secret's
    hash compared in constant time. Revoked tokens keep their row (revoke_time set)."""

    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    role: Mapped[int] = mapped_column(SmallInteger, doc="modelyard.access.v1.Role")
    display_name: Mapped[str] = mapped_column(Text)
    secret_sha256: Mapped[str] = mapped_column(String(64), doc="hex SHA-256 of the secret")
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime)
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
