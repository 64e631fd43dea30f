"""Database helpers (`runtime/db.py`): plain URLs get the asyncio drivers, and a
service's migrations run to the newest revision at start, twice without harm,
on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from runtime.db import async_url, create_engine, is_postgresql, migrate
from services.jobs.app import MIGRATIONS_DIR as JOBS_MIGRATIONS
from tests.suite_support import DatabaseFactory


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/jobs", "postgresql+asyncpg://u:p@db:5432/jobs"),
        ("sqlite:////tmp/jobs.db", "sqlite+aiosqlite:////tmp/jobs.db"),
        ("postgresql+asyncpg://db/jobs", "postgresql+asyncpg://db/jobs"),
    ],
)
def test_plain_urls_get_the_asyncio_drivers(url: str, expected: str) -> None:
    assert async_url(url) == expected


async def tables_after_migrating(url: str) -> tuple[set[str], bool]:
    engine = create_engine(url)
    try:
        await migrate(engine, JOBS_MIGRATIONS)
        await migrate(engine, JOBS_MIGRATIONS)  # a second replica starting: nothing to do
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        return tables, is_postgresql(engine)
    finally:
        await engine.dispose()


async def test_migrations_run_on_sqlite_in_a_new_folder(tmp_path: Path) -> None:
    tables, postgres = await tables_after_migrating(f"sqlite:///{tmp_path / 'new' / 'jobs.db'}")
    assert {"training_jobs", "jobs_outbox", "alembic_version"} <= tables
    assert not postgres


@pytest.fixture
def database_url(database_url_factory: DatabaseFactory) -> str:
    return database_url_factory("runtime_db")  # made outside the event loop


async def test_migrations_run_on_the_suite_database(database_url: str) -> None:
    """PostgreSQL when the machine has it (CI does), SQLite otherwise."""
    tables, postgres = await tables_after_migrating(database_url)
    assert {"training_jobs", "jobs_outbox"} <= tables
    assert postgres == database_url.startswith("postgresql")
