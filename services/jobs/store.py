"""Reading and writing jobs and outbox rows.

SQLAlchemy Core statements on the mapped tables; on PostgreSQL the hot paths
(GetTrainingJob, CreateTrainingJob) take pg_hot_path.py's one-round-trip
statements. Either way a row is converted to its `TrainingJob` message column
by column, with no join.

Changes to an existing job are optimistic: read the job with its `version`,
compute the new job (state_machine.apply_event), then
`UPDATE … WHERE job_id = :id AND version = :read_version`; when another writer
got there first, nothing is updated and the caller reads again. This works the
same on PostgreSQL and SQLite and never holds a lock while thinking.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from google.rpc import status_pb2
from sqlalchemy import Select, Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelyard.jobs.v1.scoring_job_pb2 import ScoringJob
from modelyard.jobs.v1.training_job_pb2 import (
    EvaluationReport,
    MlflowRun,
    Replay,
    TaskDetection,
    TrainingJob,
    TrainingProgress,
    TrainingSearch,
    TrainingSummary,
    Trial,
)
from runtime import access
from runtime.db import is_postgresql
from runtime.errors import failed_precondition
from runtime.pagination import Page
from services.jobs import reasons
from services.jobs.models import OutboxRow, ReportRow, TrainingJobRow, TrialRow
from services.jobs.outbox import OutboxEntry
from services.jobs.pg_hot_path import PostgresHotPath
from services.jobs.state_machine import ACTIVE_STATES, TRAINING, Job, kind_of

JOBS = cast(Table, TrainingJobRow.__table__)
OUTBOX = cast(Table, OutboxRow.__table__)
TRIALS = cast(Table, TrialRow.__table__)

# Columns holding a serialized message, and the message type of each.
_MESSAGE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("error", status_pb2.Status),
    ("task_detection", TaskDetection),
    ("progress", TrainingProgress),
    ("summary", TrainingSummary),
    ("mlflow", MlflowRun),
    ("search", TrainingSearch),
    ("replay", Replay),
)
REPORTS = cast(Table, ReportRow.__table__)


class RowLike(Protocol):
    """A row by column name: SQLAlchemy's RowMapping or asyncpg's Record."""

    def __getitem__(self, key: str) -> Any: ...


@dataclass(frozen=True)
class VersionedJob:
    job: Job
    version: int


class DuplicateRequestId(Exception):
    """Another job already holds this request_id."""


# -- row <-> message -----------------------------------------------------------------


def _datetime(timestamp: Any) -> datetime | None:
    if timestamp.seconds == 0 and timestamp.nanos == 0:
        return None
    return timestamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def _message_bytes(job: Job, field: str) -> bytes | None:
    return getattr(job, field).SerializeToString() if job.HasField(field) else None


def _run_deadline(job: Job) -> datetime | None:
    start = _datetime(job.start_time)
    if job.state not in ACTIVE_STATES or start is None:
        return None
    return start + job.max_run_duration.ToTimedelta()


def mutable_values(job: Job) -> dict[str, Any]:
    """The columns a job's life changes (everything the Trainer reports)."""
    lifecycle = {
        "state": job.state,
        "attempt": job.attempt,
        "update_time": _datetime(job.update_time),
        "start_time": _datetime(job.start_time),
        "end_time": _datetime(job.end_time),
        "run_deadline": _run_deadline(job),
        "error": _message_bytes(job, "error"),
    }
    if isinstance(job, ScoringJob):
        # The whole message: read back whole, never queried by its fields.
        empty = dict.fromkeys(("task_detection", "progress", "summary", "mlflow", "metrics"))
        return lifecycle | empty | {"replay": None, "scoring": job.SerializeToString()}
    return lifecycle | {
        "task_detection": _message_bytes(job, "task_detection"),
        "progress": _message_bytes(job, "progress"),
        "summary": _message_bytes(job, "summary"),
        "mlflow": _message_bytes(job, "mlflow"),
        "metrics": json.dumps(dict(job.metrics)) if job.metrics else None,
        "replay": _message_bytes(job, "replay"),
        "scoring": None,
    }


MUTABLE_COLUMNS = tuple(mutable_values(TrainingJob()))


def insert_values(job: Job) -> dict[str, Any]:
    if isinstance(job, ScoringJob):
        return {
            "job_id": job.job_id,
            "request_id": job.request_id or None,
            "dataset_id": job.dataset_id,
            "target_column": "",
            "task": 0,
            "params": "{}",
            "registered_model_name": job.model_name,
            "max_run_duration_seconds": job.max_run_duration.ToTimedelta().total_seconds(),
            "create_time": _datetime(job.create_time),
            "search": None,
            "kind": kind_of(job),
            "version": 1,
            "project": job.project_id or access.DEFAULT_PROJECT,
            **mutable_values(job),
        }
    return {
        "job_id": job.job_id,
        "request_id": job.request_id or None,
        "dataset_id": job.dataset_id,
        "target_column": job.target_column,
        "task": job.task,
        "params": json.dumps(dict(job.params)),
        "registered_model_name": job.registered_model_name,
        "max_run_duration_seconds": job.max_run_duration.ToTimedelta().total_seconds(),
        "create_time": _datetime(job.create_time),
        "search": _message_bytes(job, "search"),
        "kind": kind_of(job),
        "version": 1,
        "project": job.project_id or access.DEFAULT_PROJECT,
        **mutable_values(job),
    }


def row_to_job(row: RowLike) -> Job:
    """A `training_jobs` row (SQLAlchemy's or asyncpg's) as its message."""
    if row["kind"] != TRAINING:
        scoring = ScoringJob.FromString(row["scoring"])
        scoring.project_id = row["project"]
        return scoring
    job = TrainingJob(
        job_id=row["job_id"],
        dataset_id=row["dataset_id"],
        target_column=row["target_column"],
        task=row["task"],
        registered_model_name=row["registered_model_name"],
        request_id=row["request_id"] or "",
        state=row["state"],
        attempt=row["attempt"],
        project_id=row["project"],
    )
    if row["params"] != "{}":
        job.params.update(json.loads(row["params"]))
    job.max_run_duration.FromTimedelta(timedelta(seconds=row["max_run_duration_seconds"]))
    job.create_time.FromDatetime(row["create_time"])
    job.update_time.FromDatetime(row["update_time"])
    if row["start_time"] is not None:
        job.start_time.FromDatetime(row["start_time"])
    if row["end_time"] is not None:
        job.end_time.FromDatetime(row["end_time"])
    for field, message_type in _MESSAGE_COLUMNS:
        if row[field] is not None:
            getattr(job, field).CopyFrom(message_type.FromString(row[field]))
    if row["metrics"] is not None:
        job.metrics.update(json.loads(row["metrics"]))
    return job


# -- statements ------------------------------------------------------------------------
# Built once: SQLAlchemy then reuses their compiled form without rebuilding a cache key
# from a fresh statement on every call (a measurable share of a GetTrainingJob).

_BY_ID = select(JOBS).where(JOBS.c.job_id == bindparam("job_id"))
_BY_REQUEST_ID = select(JOBS).where(JOBS.c.request_id == bindparam("request_id"))
_INSERT_JOB = insert(JOBS)
_INSERT_OUTBOX = insert(OUTBOX)


ChangeListener = Callable[[Job], Awaitable[None]]


class JobStore:
    """Jobs in the database. On PostgreSQL the hottest statements take the
    one-round-trip path of pg_hot_path.py; everything else is SQLAlchemy."""

    def __init__(self, engine: AsyncEngine, hot_path: PostgresHotPath | None = None) -> None:
        self.engine = engine
        self._hot_path = hot_path
        self._change_listeners: list[ChangeListener] = []

    def add_change_listener(self, listener: ChangeListener) -> None:
        """`listener` is awaited with the job after every change `replace` commits."""
        self._change_listeners.append(listener)

    @classmethod
    async def open(cls, engine: AsyncEngine, pool_size: int) -> JobStore:
        if not is_postgresql(engine):
            return cls(engine)
        hot_path = await PostgresHotPath.open(engine, JOBS, OUTBOX, MUTABLE_COLUMNS, pool_size)
        return cls(engine, hot_path)

    async def close(self) -> None:
        if self._hot_path is not None:
            await self._hot_path.close()

    async def get(self, job_id: str) -> VersionedJob | None:
        """The job; None when there is none, or when it belongs to a project the current
        caller does not see (runtime.access: a client sees only its own project's jobs,
        the service's own loops see all), so that both answer alike."""
        row: RowLike | None
        if self._hot_path is not None:
            row = await self._hot_path.job_by_id(job_id)
        else:
            row = await self._first(_BY_ID, {"job_id": job_id})
        if row is None or not access.may_see(row["project"]):
            return None
        return VersionedJob(row_to_job(row), row["version"])

    async def find_by_request_id(self, request_id: str) -> Job | None:
        row: RowLike | None
        if self._hot_path is not None:
            row = await self._hot_path.job_by_request_id(request_id)
        else:
            row = await self._first(_BY_REQUEST_ID, {"request_id": request_id})
        if row is not None and not access.may_see(row["project"]):
            # Request ids are unique across projects; say no more of the other's job.
            raise failed_precondition(
                reasons.REQUEST_ID_IN_USE, "this request_id is in use by another project"
            )
        return None if row is None else row_to_job(row)

    async def _first(self, statement: Select[Any], parameters: dict[str, str]) -> RowLike | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement, parameters)).first()
        return None if row is None else row._mapping

    async def insert(self, job: Job, outbox: Sequence[OutboxEntry]) -> None:
        """Store a new job and its outbox rows in one transaction, in the current
        caller's project (set on `job` too).

        Raises DuplicateRequestId when another job holds the job's request_id."""
        if not job.project_id:
            job.project_id = access.current_caller().project
        if self._hot_path is not None:
            if not await self._hot_path.insert(insert_values(job), outbox, datetime.now(UTC)):
                raise DuplicateRequestId(job.request_id)
            return
        try:
            async with self.engine.begin() as connection:
                await connection.execute(_INSERT_JOB, insert_values(job))
                await _insert_outbox(connection, outbox)
        except IntegrityError as error:
            if job.request_id and await self.find_by_request_id(job.request_id) is not None:
                raise DuplicateRequestId(job.request_id) from error
            raise

    async def replace(
        self, job: Job, read_version: int, outbox: Sequence[OutboxEntry] = ()
    ) -> bool:
        """Write `job` if nobody changed it since `read_version`; False when somebody did."""
        written = await self._write_replacement(job, read_version, outbox)
        if written:
            for listener in self._change_listeners:
                await listener(job)
        return written

    async def _write_replacement(
        self, job: Job, read_version: int, outbox: Sequence[OutboxEntry]
    ) -> bool:
        if self._hot_path is not None:
            return await self._hot_path.replace(
                job.job_id, read_version, mutable_values(job), outbox, datetime.now(UTC)
            )
        statement = (
            update(JOBS)
            .where(JOBS.c.job_id == job.job_id, JOBS.c.version == read_version)
            .values(version=read_version + 1, **mutable_values(job))
        )
        async with self.engine.begin() as connection:
            result = await connection.execute(statement)
            if result.rowcount != 1:
                return False
            await _insert_outbox(connection, outbox)
        return True

    async def list_page(
        self, page: Page, state: int | None, dataset_id: str | None, kind: str = TRAINING
    ) -> list[Job]:
        """One page of one kind of job, newest first; one row more than the page when
        there is a next page."""
        statement = select(JOBS).where(JOBS.c.kind == kind)
        if (project := access.visible_project()) is not None:
            statement = statement.where(JOBS.c.project == project)
        if state is not None:
            statement = statement.where(JOBS.c.state == state)
        if dataset_id is not None:
            statement = statement.where(JOBS.c.dataset_id == dataset_id)
        if (after := page.after_time()) is not None:
            after_time, after_id = after
            statement = statement.where(
                or_(
                    JOBS.c.create_time < after_time,
                    and_(JOBS.c.create_time == after_time, JOBS.c.job_id < after_id),
                )
            )
        statement = statement.order_by(JOBS.c.create_time.desc(), JOBS.c.job_id.desc()).limit(
            page.size + 1
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [row_to_job(row._mapping) for row in rows]

    async def save_trial(self, job_id: str, trial: Trial) -> bool:
        """Keep a trial the Trainer reported; False when it was already kept (redelivery)."""
        values = {
            "job_id": job_id,
            "attempt": trial.attempt,
            "number": trial.number,
            "trial": trial.SerializeToString(),
            "create_time": datetime.now(UTC),
        }
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(TRIALS), values)
        except IntegrityError:
            return False
        return True

    async def save_report(self, job_id: str, report: EvaluationReport) -> bool:
        """Keep a succeeded job's report; False when it was already kept (redelivery)."""
        values = {
            "job_id": job_id,
            "report": report.SerializeToString(),
            "create_time": datetime.now(UTC),
        }
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(REPORTS), values)
        except IntegrityError:
            return False
        return True

    async def get_report(self, job_id: str) -> EvaluationReport | None:
        statement = select(REPORTS.c.report).where(REPORTS.c.job_id == job_id)
        async with self.engine.connect() as connection:
            found = (await connection.execute(statement)).scalar_one_or_none()
        return EvaluationReport.FromString(found) if found is not None else None

    async def list_trials(self, job_id: str, attempt: int, page: Page) -> list[Trial]:
        """One page of a job attempt's trials by number; one more when there is a next page."""
        statement = select(TRIALS.c.trial).where(
            TRIALS.c.job_id == job_id, TRIALS.c.attempt == attempt
        )
        if (after := page.after_number()) is not None:
            statement = statement.where(TRIALS.c.number > after)
        statement = statement.order_by(TRIALS.c.number).limit(page.size + 1)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).scalars().all()
        return [Trial.FromString(row) for row in rows]

    async def overdue_job_ids(self, deadline_before: datetime, limit: int = 100) -> list[str]:
        """RUNNING or CANCELLING jobs whose run deadline is before `deadline_before`."""
        statement = (
            select(JOBS.c.job_id)
            .where(JOBS.c.run_deadline < deadline_before)
            .where(JOBS.c.state.in_(ACTIVE_STATES))
            .order_by(JOBS.c.run_deadline)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return list((await connection.execute(statement)).scalars())

    async def count_by_state(self) -> dict[int, int]:
        statement = select(JOBS.c.state, func.count()).group_by(JOBS.c.state)
        async with self.engine.connect() as connection:
            return {int(state): int(count) for state, count in await connection.execute(statement)}

    async def queued_job_ids(self, created_before: datetime, limit: int = 100) -> list[str]:
        statement = (
            select(JOBS.c.job_id)
            .where(JOBS.c.state == TrainingJob.QUEUED, JOBS.c.create_time < created_before)
            .order_by(JOBS.c.create_time)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return list((await connection.execute(statement)).scalars())


async def _insert_outbox(connection: AsyncConnection, entries: Sequence[OutboxEntry]) -> None:
    if not entries:
        return
    now = datetime.now(UTC)
    await connection.execute(
        _INSERT_OUTBOX,
        [
            {
                "kind": str(entry.kind),
                "job_id": entry.job_id,
                "msg_id": entry.msg_id,
                "payload": entry.payload,
                "create_time": now,
                "publish_attempts": 0,
            }
            for entry in entries
        ],
    )


async def delete_published_outbox(engine: AsyncEngine, published_before: datetime) -> int:
    async with engine.begin() as connection:
        result = await connection.execute(
            delete(OUTBOX).where(
                OUTBOX.c.published_time.is_not(None), OUTBOX.c.published_time < published_before
            )
        )
    return int(result.rowcount)
