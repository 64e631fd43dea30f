"""The statements every job goes through, on PostgreSQL, in one round trip each.

Through SQLAlchemy a read costs four round trips (pool pre-ping, BEGIN, SELECT,
ROLLBACK) and a write five; measured on the 2-core reference machine that was
most of GetTrainingJob's and CreateTrainingJob's server time. So these
statements go straight to asyncpg, on a small pool of their own:

- a read is one `SELECT <columns> FROM training_jobs WHERE <key> = $1`;
- a create is one statement inserting the job and its outbox rows together
  (a single statement is its own transaction), inserting nothing when another
  job already holds the request_id (`ON CONFLICT DO NOTHING`);
- a change is one statement updating the job if its version is still the one
  read, and inserting its outbox rows only then.

Lists, the relay and the watchdog's queries stay on SQLAlchemy, and SQLite uses
SQLAlchemy for everything. A connection the server dropped (terminated backend,
restart) costs one retry on a new connection, not an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.logs import error_fields
from services.jobs.outbox import OutboxEntry

logger = logging.getLogger("modelyard.jobs.store")

T = TypeVar("T")

# After these the statement either did not run or is safe to run again.
CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A pooled connection whose backend was terminated can fail before sending
    # anything: "cannot switch to state …; another operation is in progress".
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    OSError,
)


def asyncpg_dsn(engine: AsyncEngine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _insert_outbox_rows(outbox: Table, source: str, first: int) -> str:
    """Outbox rows for the job id `source` returns, from arrays $first (create time),
    $first+1 (kinds), $first+2 (message ids) and $first+3 (payloads)."""
    return f"""
        INSERT INTO {outbox.name} (kind, job_id, msg_id, payload, create_time, publish_attempts)
        SELECT entry.kind, {source}.job_id, entry.msg_id, entry.payload, ${first}, 0
        FROM {source}, unnest(${first + 1}::text[], ${first + 2}::text[], ${first + 3}::bytea[])
            AS entry(kind, msg_id, payload)
    """


def _outbox_arguments(outbox: Sequence[OutboxEntry], now: datetime) -> list[Any]:
    return [
        now,
        [str(entry.kind) for entry in outbox],
        [entry.msg_id for entry in outbox],
        [entry.payload for entry in outbox],
    ]


class _NoResetConnection(asyncpg.Connection):
    """A pooled connection given back as it is. asyncpg's default resets every
    connection on release (`RESET ALL; UNLISTEN *; CLOSE ALL; …`): a second round trip
    per statement. These statements leave no session state behind, and an open
    transaction is rolled back on release whatever this returns."""

    def get_reset_query(self) -> str:
        return ""


class PostgresHotPath:
    def __init__(
        self, pool: asyncpg.Pool, jobs: Table, outbox: Table, mutable: Sequence[str]
    ) -> None:
        self._pool = pool
        self._columns = [column.name for column in jobs.columns]
        self._mutable = list(mutable)
        listed = ", ".join(self._columns)
        self._select_by_id = f"SELECT {listed} FROM {jobs.name} WHERE job_id = $1"
        self._select_by_request_id = f"SELECT {listed} FROM {jobs.name} WHERE request_id = $1"

        values = ", ".join(f"${i}" for i in range(1, len(self._columns) + 1))
        self._insert = f"""
            WITH job AS (
                INSERT INTO {jobs.name} ({listed}) VALUES ({values})
                ON CONFLICT (request_id) DO NOTHING
                RETURNING job_id
            ), queued AS ({_insert_outbox_rows(outbox, "job", len(self._columns) + 1)})
            SELECT count(*) FROM job
        """

        # $1 job id, $2 version read, $3… the mutable columns, then the outbox arrays
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(self._mutable, 3))
        self._replace = f"""
            WITH job AS (
                UPDATE {jobs.name} SET {assignments}, version = $2 + 1
                WHERE job_id = $1 AND version = $2
                RETURNING job_id
            ), queued AS ({_insert_outbox_rows(outbox, "job", len(self._mutable) + 3)})
            SELECT count(*) FROM job
        """

    @classmethod
    async def open(
        cls, engine: AsyncEngine, jobs: Table, outbox: Table, mutable: Sequence[str], size: int
    ) -> PostgresHotPath:
        pool = await asyncpg.create_pool(
            asyncpg_dsn(engine), min_size=1, max_size=size, connection_class=_NoResetConnection
        )
        return cls(pool, jobs, outbox, mutable)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(10):
                await self._pool.close()  # waits for connections in use to come back
        except TimeoutError:
            self._pool.terminate()

    async def job_by_id(self, job_id: str) -> Mapping[str, Any] | None:
        return await self._retrying(lambda c: c.fetchrow(self._select_by_id, job_id))

    async def job_by_request_id(self, request_id: str) -> Mapping[str, Any] | None:
        return await self._retrying(lambda c: c.fetchrow(self._select_by_request_id, request_id))

    async def insert(
        self, values: Mapping[str, Any], outbox: Sequence[OutboxEntry], now: datetime
    ) -> bool:
        """Insert a job and its outbox rows; False when its request_id is taken."""
        arguments = [*(values[c] for c in self._columns), *_outbox_arguments(outbox, now)]
        try:
            return await self._retrying(lambda c: self._count(c, self._insert, arguments))
        except asyncpg.UniqueViolationError as error:
            # The job id is new to this call: a clash on it means our first try
            # committed before its connection dropped, and the retry found it.
            if error.constraint_name == "training_jobs_pkey":
                return True
            raise

    async def replace(
        self,
        job_id: str,
        read_version: int,
        values: Mapping[str, Any],
        outbox: Sequence[OutboxEntry],
        now: datetime,
    ) -> bool:
        """Write a job's changes and outbox rows if its version is still `read_version`.

        (A retry after a first try that committed finds the version moved on and
        returns False: the caller reads the job again and finds its change there.)"""
        arguments = [
            job_id,
            read_version,
            *(values[name] for name in self._mutable),
            *_outbox_arguments(outbox, now),
        ]
        return await self._retrying(lambda c: self._count(c, self._replace, arguments))

    @staticmethod
    async def _count(connection: asyncpg.Connection, statement: str, arguments: list[Any]) -> bool:
        return bool(await connection.fetchval(statement, *arguments))

    async def _retrying(self, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            async with self._pool.acquire() as connection:
                return await operation(connection)
        except CONNECTION_LOST as error:
            logger.warning(
                "database connection lost; retrying once",
                extra=error_fields(error),
            )
            # A lost backend rarely goes alone (server restart, terminated sessions):
            # the pool's other idle connections may be dead too without knowing it yet,
            # and a CI run's retry met one ("another operation is in progress"). The
            # retry gets a new connection instead.
            await self._pool.expire_connections()
        async with self._pool.acquire() as connection:
            return await operation(connection)
