"""Projects and their API tokens (secrets stored as SHA-256 only); the `default` project.

Revision ID: 0006_projects
Revises: 0005_reports
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from services.jobs.models import UtcDateTime

revision = "0006_projects"
down_revision = "0005_reports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("project_id", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True, unique=True),
        sa.Column("create_time", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False, index=True),
        sa.Column("role", sa.SmallInteger(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True, unique=True),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("expire_time", UtcDateTime(), nullable=False),
        sa.Column("revoke_time", UtcDateTime(), nullable=True),
    )
    op.bulk_insert(
        projects,
        [
            {
                "project_id": "default",
                "display_name": "Default project",
                "request_id": None,
                "create_time": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_table("projects")
