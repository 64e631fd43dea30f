"""Version numbers counted per (project, display name), not per name across projects.

Numbers already given are kept (jobs and users refer to them). The one counter of a
name goes on in every project that has datasets under that name, so none of its numbers
is given twice, and in `default` (where every dataset before projects was) unless only
other projects have that name now; a project's first dataset of a name from now on is
version 1.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    counters = connection.execute(
        sa.text("SELECT display_name, last_version FROM dataset_names")
    ).fetchall()
    named = connection.execute(sa.text("SELECT DISTINCT project, display_name FROM datasets"))
    holders: dict[str, set[str]] = {}
    for project, display_name in named:
        holders.setdefault(display_name, set()).add(project)
    op.drop_table("dataset_names")
    op.create_table(
        "dataset_names",
        sa.Column("project", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.String(200), primary_key=True),
        sa.Column("last_version", sa.BigInteger(), nullable=False),
    )
    # A name that no dataset has any more keeps its counter in default.
    rows = [
        {"p": project, "n": display_name, "v": last_version}
        for display_name, last_version in counters
        for project in holders.get(display_name) or {"default"}
    ]
    if rows:
        connection.execute(
            sa.text(
                "INSERT INTO dataset_names (project, display_name, last_version) "
                "VALUES (:p, :n, :v)"
            ),
            rows,
        )
    op.drop_index("ix_datasets_display_name_version", table_name="datasets")
    op.create_index(
        "ix_datasets_project_display_name_version",
        "datasets",
        ["project", "display_name", "version"],
    )


def downgrade() -> None:
    op.drop_index("ix_datasets_project_display_name_version", table_name="datasets")
    op.create_index("ix_datasets_display_name_version", "datasets", ["display_name", "version"])
    connection = op.get_bind()
    counters = connection.execute(
        sa.text("SELECT display_name, MAX(last_version) FROM dataset_names GROUP BY display_name")
    ).fetchall()
    op.drop_table("dataset_names")
    op.create_table(
        "dataset_names",
        sa.Column("display_name", sa.String(200), primary_key=True),
        sa.Column("last_version", sa.BigInteger(), nullable=False),
    )
    if counters:
        connection.execute(
            sa.text("INSERT INTO dataset_names (display_name, last_version) VALUES (:n, :v)"),
            [{"n": name, "v": version} for name, version in counters],
        )
