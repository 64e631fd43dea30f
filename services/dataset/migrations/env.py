"""Alembic environment of the Dataset service (run by runtime.db.migrate at start)."""

from runtime.db import run_migrations_from_env
from services.dataset.models import Base

run_migrations_from_env(Base.metadata)
