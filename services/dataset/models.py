"""The Dataset service's own tables (SQLAlchemy 2, typed mappings)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class DatasetRecord(Base):
    """One uploaded CSV. Schema and profile are the serialized `Dataset.columns`."""

    __tablename__ = "datasets"

    dataset_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    # A Dataset.State name: UPLOADING, PROCESSING, READY or FAILED.
    state: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    delimiter: Mapped[str] = mapped_column(String(4))
    has_header: Mapped[bool]
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    # modelyard.dataset.v1.Dataset holding `columns`, `header_repairs` and `source_format`,
    # serialized.
    columns: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The version of the named dataset (project, display_name), given when it becomes READY;
    # 0 before.
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    # How the original is kept: "" as uploaded, "zstd" compressed (uncompressed text).
    original_codec: Mapped[str] = mapped_column(String(16), default="")
    # Set by the one DeleteDataset call that removes the dataset: it is gone for every reader.
    deleting: Mapped[bool] = mapped_column(default=False)
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # While UPLOADING or PROCESSING: renewed by the process doing the work; once it
    # passes, that process is gone and the janitor fails the dataset.
    lease_expire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The project the dataset belongs to (`default` for those uploaded before projects).
    project: Mapped[str] = mapped_column(String(64), server_default="default")

    __table_args__ = (
        Index("ix_datasets_create_time_dataset_id", "create_time", "dataset_id"),
        Index("ix_datasets_state_lease_expire_time", "state", "lease_expire_time"),
        Index("ix_datasets_project_display_name_version", "project", "display_name", "version"),
        Index("ix_datasets_project_create_time", "project", "create_time", "dataset_id"),
    )


class DatasetNameRecord(Base):
    """A named dataset of a project: the last version number given under its display name
    in that project (never reused). Each project counts its own, so a number tells nothing
    about another project's datasets."""

    __tablename__ = "dataset_names"

    project: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_version: Mapped[int] = mapped_column(BigInteger)
