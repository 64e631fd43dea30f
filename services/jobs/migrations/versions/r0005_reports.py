"""Succeeded jobs' evaluation reports.

Revision ID: 0005_reports
Revises: 0004_scoring
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.jobs.models import UtcDateTime

revision = "0005_reports"
down_revision = "0004_scoring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_reports",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("report", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("training_reports")
