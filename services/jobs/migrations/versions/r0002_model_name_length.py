"""Registered model names up to 128 characters, as the Trainer registers them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _resize(100, 128)


def downgrade() -> None:
    _resize(128, 100)


def _resize(old: int, new: int) -> None:
    # SQLite does not enforce VARCHAR lengths: only PostgreSQL's column changes.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column(
        "training_jobs",
        "registered_model_name",
        existing_type=sa.String(old),
        type_=sa.String(new),
        existing_nullable=False,
    )
