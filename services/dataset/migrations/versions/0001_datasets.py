"""The datasets table.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("dataset_id", sa.String(32), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=True, unique=True),
        sa.Column("delimiter", sa.String(4), nullable=False),
        sa.Column("has_header", sa.Boolean(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("columns", sa.LargeBinary(), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_reason", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expire_time", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_datasets_create_time_dataset_id", "datasets", ["create_time", "dataset_id"])
    op.create_index(
        "ix_datasets_state_lease_expire_time", "datasets", ["state", "lease_expire_time"]
    )


def downgrade() -> None:
    op.drop_index("ix_datasets_state_lease_expire_time", table_name="datasets")
    op.drop_index("ix_datasets_create_time_dataset_id", table_name="datasets")
    op.drop_table("datasets")
