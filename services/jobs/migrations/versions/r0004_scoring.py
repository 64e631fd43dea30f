"""Scoring jobs: rows of `training_jobs` of kind `scoring`, their own fields in `scoring`.

Revision ID: 0004_scoring
Revises: 0003_search
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_scoring"
down_revision = "0003_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "training_jobs",
        sa.Column("kind", sa.String(16), nullable=False, server_default="training"),
    )
    op.add_column("training_jobs", sa.Column("scoring", sa.LargeBinary(), nullable=True))
    op.create_index(
        "ix_training_jobs_kind_create_time", "training_jobs", ["kind", "create_time", "job_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_training_jobs_kind_create_time", "training_jobs")
    op.execute("DELETE FROM training_jobs WHERE kind = 'scoring'")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("scoring")
        batch.drop_column("kind")
