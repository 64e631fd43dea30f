"""Versions of named datasets, and deletes that only one caller wins.

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
    with op.batch_alter_table("datasets") as table:
        table.add_column(sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"))
        table.add_column(
            sa.Column("deleting", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index("ix_datasets_display_name_version", "datasets", ["display_name", "version"])
    op.create_table(
        "dataset_names",
        sa.Column("display_name", sa.String(200), primary_key=True),
        sa.Column("last_version", sa.BigInteger(), nullable=False),
    )
    # Datasets already READY become the versions of their names, oldest first.
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT dataset_id, display_name FROM datasets WHERE state = 'READY' "
            "ORDER BY create_time, dataset_id"
        )
    ).fetchall()
    last: dict[str, int] = {}
    for dataset_id, display_name in rows:
        last[display_name] = last.get(display_name, 0) + 1
        connection.execute(
            sa.text("UPDATE datasets SET version = :version WHERE dataset_id = :dataset_id"),
            {"version": last[display_name], "dataset_id": dataset_id},
        )
    for display_name, version in last.items():
        connection.execute(
            sa.text("INSERT INTO dataset_names (display_name, last_version) VALUES (:n, :v)"),
            {"n": display_name, "v": version},
        )


def downgrade() -> None:
    op.drop_table("dataset_names")
    op.drop_index("ix_datasets_display_name_version", table_name="datasets")
    with op.batch_alter_table("datasets") as table:
        table.drop_column("deleting")
        table.drop_column("version")
