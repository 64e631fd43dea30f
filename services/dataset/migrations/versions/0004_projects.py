"""Every dataset belongs to a project; those uploaded before projects are in `default`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as table:
        table.add_column(
            sa.Column("project", sa.String(64), nullable=False, server_default="default")
        )
    op.create_index(
        "ix_datasets_project_create_time", "datasets", ["project", "create_time", "dataset_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_datasets_project_create_time", "datasets")
    with op.batch_alter_table("datasets") as table:
        table.drop_column("project")
