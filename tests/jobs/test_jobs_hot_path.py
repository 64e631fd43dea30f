"""The PostgreSQL hot path's retry after a lost connection (its logic, on a stand-in
pool: the resilience tests terminate real backends, but which pooled connection has
already noticed is a race they cannot steer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, MetaData, String, Table

from services.jobs.pg_hot_path import PostgresHotPath


class PoolOfDeadConnections:
    """A pool whose connections from before `expire_connections` all fail, as pooled
    connections to terminated backends do before asyncpg notices."""

    def __init__(self) -> None:
        self.generation = 0
        self.acquired: list[int] = []

    async def expire_connections(self) -> None:
        self.generation += 1

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        self.acquired.append(self.generation)
        yield self

    async def fetchrow(self, statement: str, *arguments: Any) -> dict[str, str]:
        if self.generation == 0:
            raise asyncpg.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
        return {"job_id": arguments[0]}


def hot_path(pool: PoolOfDeadConnections) -> PostgresHotPath:
    metadata = MetaData()
    jobs = Table("training_jobs", metadata, Column("job_id", String, primary_key=True))
    outbox = Table("outbox", metadata, Column("msg_id", String, primary_key=True))
    return PostgresHotPath(pool, jobs, outbox, mutable=[])


async def test_a_lost_connection_is_retried_on_a_new_one_not_on_its_pool_peers() -> None:
    pool = PoolOfDeadConnections()
    assert await hot_path(pool).job_by_id("job-1") == {"job_id": "job-1"}
    assert pool.acquired == [0, 1]  # the retry's connection came after the pool expired


async def test_a_second_failure_is_the_callers_error() -> None:
    class PoolThatStaysDown(PoolOfDeadConnections):
        async def expire_connections(self) -> None:
            pass  # the new connections fail too (the server is still down)

    with pytest.raises(asyncpg.InternalClientError):
        await hot_path(PoolThatStaysDown()).job_by_id("job-1")
