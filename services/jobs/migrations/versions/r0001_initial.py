"""Training jobs and the outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.jobs.models import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# On PostgreSQL every insert into the outbox notifies the relays of all replicas
# (LISTEN modelyard_jobs_outbox), so none waits for its polling interval.
NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION jobs_outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('modelyard_jobs_outbox', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
NOTIFY_TRIGGER = """
CREATE TRIGGER jobs_outbox_notify AFTER INSERT ON jobs_outbox
FOR EACH STATEMENT EXECUTE FUNCTION jobs_outbox_notify()
"""


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("target_column", sa.Text(), nullable=False),
        sa.Column("task", sa.SmallInteger(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("registered_model_name", sa.String(100), nullable=False),
        sa.Column("max_run_duration_seconds", sa.Float(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("start_time", UtcDateTime(), nullable=True),
        sa.Column("end_time", UtcDateTime(), nullable=True),
        sa.Column("run_deadline", UtcDateTime(), nullable=True),
        sa.Column("error", sa.LargeBinary(), nullable=True),
        sa.Column("task_detection", sa.LargeBinary(), nullable=True),
        sa.Column("progress", sa.LargeBinary(), nullable=True),
        sa.Column("summary", sa.LargeBinary(), nullable=True),
        sa.Column("mlflow", sa.LargeBinary(), nullable=True),
        sa.Column("metrics", sa.Text(), nullable=True),
    )
    op.create_index("uq_training_jobs_request_id", "training_jobs", ["request_id"], unique=True)
    op.create_index("ix_training_jobs_create_time", "training_jobs", ["create_time", "job_id"])
    op.create_index(
        "ix_training_jobs_state_create_time", "training_jobs", ["state", "create_time", "job_id"]
    )
    op.create_index(
        "ix_training_jobs_dataset_create_time",
        "training_jobs",
        ["dataset_id", "create_time", "job_id"],
    )
    op.create_index("ix_training_jobs_run_deadline", "training_jobs", ["run_deadline"])

    op.create_table(
        "jobs_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("msg_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("published_time", UtcDateTime(), nullable=True),
        sa.Column("publish_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_jobs_outbox_unpublished",
        "jobs_outbox",
        ["id"],
        postgresql_where=sa.text("published_time IS NULL"),
        sqlite_where=sa.text("published_time IS NULL"),
    )
    op.create_index(
        "ix_jobs_outbox_published_time",
        "jobs_outbox",
        ["published_time"],
        postgresql_where=sa.text("published_time IS NOT NULL"),
        sqlite_where=sa.text("published_time IS NOT NULL"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_outbox_notify ON jobs_outbox")
        op.execute("DROP FUNCTION IF EXISTS jobs_outbox_notify()")
    op.drop_table("jobs_outbox")
    op.drop_table("training_jobs")
