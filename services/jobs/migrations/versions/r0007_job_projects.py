"""Every job belongs to a project; the jobs made before projects are in `default`.

Revision ID: 0007_job_projects
Revises: 0006_projects
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_job_projects"
down_revision = "0006_projects"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(
            sa.Column("project", sa.String(64), nullable=False, server_default="default")
        )
    op.create_index(
        "ix_training_jobs_project_create_time",
        "training_jobs",
        ["project", "create_time", "job_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_training_jobs_project_create_time", "training_jobs")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("project")
