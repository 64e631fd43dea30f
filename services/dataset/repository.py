"""Reads and writes of the datasets table, one short transaction each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelyard.dataset.v1 import dataset_pb2
from runtime import access
from runtime.pagination import Page
from services.dataset.models import DatasetNameRecord, DatasetRecord

State = dataset_pb2.Dataset.State
UPLOADING = State.Name(State.UPLOADING)
PROCESSING = State.Name(State.PROCESSING)
READY = State.Name(State.READY)
FAILED = State.Name(State.FAILED)
IN_PROGRESS = (UPLOADING, PROCESSING)


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RequestIdTakenError(Exception):
    """Another upload with the same request_id was recorded first."""


class _NotProcessingError(Exception):
    """The dataset is no longer PROCESSING: the transaction that would make it READY is undone."""


@dataclass(frozen=True)
class ReadyFields:
    """What a dataset gets when it becomes READY."""

    details: bytes
    row_count: int
    delimiter: str
    original_codec: str


@dataclass(frozen=True)
class ListFilters:
    display_name_contains: str = ""
    state: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"display_name_contains": self.display_name_contains, "state": self.state}


def _visible(query: Any) -> Any:
    """`query` limited to the current caller's project (all of them for a service)."""
    project = access.visible_project()
    return query if project is None else query.where(DatasetRecord.project == project)


class DatasetRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], lease: timedelta) -> None:
        self._sessions = sessions
        self._lease = lease

    async def get(self, dataset_id: str) -> DatasetRecord | None:
        """The dataset, unless it is gone (or being deleted) or of a project the current
        caller does not see (runtime.access): both answer alike."""
        async with self._sessions() as session:
            record = await session.get(DatasetRecord, dataset_id)
            if record is None or record.deleting or not access.may_see(record.project):
                return None
            return record

    async def latest_version(self, display_name: str) -> DatasetRecord | None:
        """The READY dataset of the highest version under `display_name`."""
        async with self._sessions() as session:
            result = await session.execute(
                self._versions(display_name).order_by(DatasetRecord.version.desc()).limit(1)
            )
            return result.scalar_one_or_none()

    async def version(self, display_name: str, version: int) -> DatasetRecord | None:
        async with self._sessions() as session:
            result = await session.execute(
                self._versions(display_name).where(DatasetRecord.version == version)
            )
            return result.scalar_one_or_none()

    async def list_versions(self, display_name: str, page: Page) -> list[DatasetRecord]:
        """One page of a name's READY versions, newest version first (one row more tells
        there is a next page)."""
        query = self._versions(display_name)
        if (after := page.after_number()) is not None:
            query = query.where(DatasetRecord.version < after)
        query = query.order_by(DatasetRecord.version.desc()).limit(page.size + 1)
        async with self._sessions() as session:
            return list((await session.execute(query)).scalars())

    @staticmethod
    def _versions(display_name: str) -> Any:
        """A name's READY versions in the caller's own project: names and their numbers
        are per project, so a service's own call (which sees every project by id) looks
        names up where it uploads, in its project (`default`)."""
        return select(DatasetRecord).where(
            DatasetRecord.project == access.current_caller().project,
            DatasetRecord.display_name == display_name,
            DatasetRecord.state == READY,
            DatasetRecord.deleting.is_(False),
        )

    async def get_by_request_id(self, request_id: str) -> DatasetRecord | None:
        async with self._sessions() as session:
            result = await session.execute(
                _visible(select(DatasetRecord).where(DatasetRecord.request_id == request_id))
            )
            return result.scalar_one_or_none()

    async def create_uploading(self, record: DatasetRecord) -> None:
        """Insert a new UPLOADING dataset; a FAILED one with the same request_id gives way."""
        now = utc_now()
        record.project = access.current_caller().project
        record.state = UPLOADING
        record.create_time = record.update_time = now
        record.lease_expire_time = now + self._lease
        try:
            async with self._sessions.begin() as session:
                if record.request_id:
                    await session.execute(
                        delete(DatasetRecord).where(
                            DatasetRecord.request_id == record.request_id,
                            DatasetRecord.state == FAILED,
                        )
                    )
                session.add(record)
        except IntegrityError as error:
            raise RequestIdTakenError(record.request_id) from error

    async def mark_processing(self, dataset_id: str, size_bytes: int, sha256: str) -> None:
        await self._update(
            dataset_id, IN_PROGRESS, state=PROCESSING, size_bytes=size_bytes, sha256=sha256
        )

    async def mark_ready(self, record: DatasetRecord, fields: ReadyFields) -> bool:
        """READY, as the next version of its name in its project, unless the dataset stopped being
        PROCESSING meanwhile (the janitor failed it). One transaction: the version
        counter only moves when the dataset does become READY."""
        for _ in range(3):  # a first version of a new name may race another: retry it
            try:
                async with self._sessions.begin() as session:
                    version = await self._next_version(session, record.project, record.display_name)
                    result = await session.execute(
                        update(DatasetRecord)
                        .where(
                            DatasetRecord.dataset_id == record.dataset_id,
                            DatasetRecord.state == PROCESSING,
                        )
                        .values(
                            update_time=utc_now(),
                            state=READY,
                            columns=fields.details,
                            row_count=fields.row_count,
                            delimiter=fields.delimiter,
                            original_codec=fields.original_codec,
                            version=version,
                            lease_expire_time=None,
                        )
                    )
                    if not result.rowcount:  # type: ignore[attr-defined]
                        raise _NotProcessingError
                return True
            except _NotProcessingError:
                return False
            except IntegrityError:
                continue
        raise RuntimeError(f"could not give {record.display_name!r} its next version")

    @staticmethod
    async def _next_version(session: AsyncSession, project: str, display_name: str) -> int:
        result = await session.execute(
            update(DatasetNameRecord)
            .where(
                DatasetNameRecord.project == project,
                DatasetNameRecord.display_name == display_name,
            )
            .values(last_version=DatasetNameRecord.last_version + 1)
            .returning(DatasetNameRecord.last_version)
        )
        version = result.scalar_one_or_none()
        if version is not None:
            return int(version)
        session.add(DatasetNameRecord(project=project, display_name=display_name, last_version=1))
        await session.flush()
        return 1

    async def claim_delete(self, dataset_id: str, states: Sequence[str]) -> bool:
        """Mark the dataset as being deleted; False when another caller did first."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(DatasetRecord)
                .where(
                    DatasetRecord.dataset_id == dataset_id,
                    DatasetRecord.state.in_(states),
                    DatasetRecord.deleting.is_(False),
                )
                .values(deleting=True)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release_delete(self, dataset_id: str) -> None:
        """The delete could not finish: the dataset is back for everyone."""
        await self._update(dataset_id, (READY, FAILED), deleting=False)

    async def mark_failed(self, dataset_id: str, code: int, reason: str, message: str) -> bool:
        return await self._update(
            dataset_id,
            IN_PROGRESS,
            state=FAILED,
            error_code=code,
            error_reason=reason,
            error_message=message,
            lease_expire_time=None,
        )

    async def _update(self, dataset_id: str, from_states: Sequence[str], **values: Any) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(DatasetRecord)
                .where(DatasetRecord.dataset_id == dataset_id, DatasetRecord.state.in_(from_states))
                .values(update_time=utc_now(), **values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(self, dataset_id: str) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(DatasetRecord).where(DatasetRecord.dataset_id == dataset_id)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def list_page(self, page: Page, filters: ListFilters) -> list[DatasetRecord]:
        """One page, newest first; one row more than the page size tells there is a next page."""
        query = _visible(select(DatasetRecord).where(DatasetRecord.deleting.is_(False)))
        if filters.display_name_contains:
            query = query.where(
                func.lower(DatasetRecord.display_name).contains(
                    filters.display_name_contains.lower(), autoescape=True
                )
            )
        if filters.state:
            query = query.where(DatasetRecord.state == filters.state)
        if (after := page.after_time()) is not None:
            after_time, after_id = after
            query = query.where(
                or_(
                    DatasetRecord.create_time < after_time,
                    and_(
                        DatasetRecord.create_time == after_time,
                        DatasetRecord.dataset_id < after_id,
                    ),
                )
            )
        query = query.order_by(
            DatasetRecord.create_time.desc(), DatasetRecord.dataset_id.desc()
        ).limit(page.size + 1)
        async with self._sessions() as session:
            return list((await session.execute(query)).scalars())

    async def renew_leases(self, dataset_ids: Sequence[str]) -> None:
        if not dataset_ids:
            return
        async with self._sessions.begin() as session:
            await session.execute(
                update(DatasetRecord)
                .where(
                    DatasetRecord.dataset_id.in_(dataset_ids),
                    DatasetRecord.state.in_(IN_PROGRESS),
                )
                .values(lease_expire_time=utc_now() + self._lease)
            )

    async def expired_uploads(self, limit: int = 100) -> list[str]:
        """Datasets still in progress whose process stopped renewing their lease."""
        async with self._sessions() as session:
            result = await session.execute(
                select(DatasetRecord.dataset_id)
                .where(
                    DatasetRecord.state.in_(IN_PROGRESS),
                    DatasetRecord.lease_expire_time < utc_now(),
                )
                .limit(limit)
            )
            return list(result.scalars())
