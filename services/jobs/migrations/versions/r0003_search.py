"""A job's search and replay, and the trials of searching jobs.

Revision ID: 0003_search
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.jobs.models import UtcDateTime

revision = "0003_search"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_jobs", sa.Column("search", sa.LargeBinary(), nullable=True))
    op.add_column("training_jobs", sa.Column("replay", sa.LargeBinary(), nullable=True))
    op.create_table(
        "training_trials",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("number", sa.Integer(), primary_key=True),
        sa.Column("trial", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("training_trials")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("replay")
        batch.drop_column("search")
