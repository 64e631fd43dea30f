"""The Jobs service's settings: every field is read from `MODELYARD_JOBS_<FIELD>`
(but the run-duration limits, shared with the Trainer: `RunDurationSettings`)
and has a default that works on a bare machine."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from runtime.settings import (
    CommonSettings,
    DatasetClientSettings,
    ListenAddress,
    MetricsAddress,
    NatsSettings,
    RunDurationSettings,
    TrainerClientSettings,
)


class JobsSettings(
    CommonSettings,
    NatsSettings,
    DatasetClientSettings,
    TrainerClientSettings,
    RunDurationSettings,
):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_JOBS_")

    listen_address: ListenAddress = "127.0.0.1:50052"
    metrics_address: MetricsAddress = "127.0.0.1:9452"
    metrics_sample_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How often jobs by state, queue depth and consumer lag are sampled.",
    )
    database_url: str = Field(
        default="",
        description=(
            "SQLAlchemy URL of the jobs database (`postgresql://…` or `sqlite:///…`). "
            "Empty means SQLite at <state_dir>/jobs.db."
        ),
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        description=(
            "PostgreSQL connections: SQLAlchemy's pool keeps this many (as many again may "
            "overflow), and the pool of the create/get hot path holds up to this many."
        ),
    )
    nats_publish_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a JetStream publish waits for its acknowledgement."
    )
    dependency_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Deadline of the GetDataset and ValidateTrainingParams calls CreateTrainingJob makes."
        ),
    )
    dataset_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "How long a READY dataset's columns are reused by CreateTrainingJob without asking "
            "DatasetService again (0 turns the cache off). A READY dataset's columns never change; "
            "a dataset deleted meanwhile can still receive jobs for this long (they then fail "
            "in the Trainer)."
        ),
    )
    max_search_budget_seconds: float = Field(
        default=3600.0,
        ge=1,
        description="The largest search budget a job may ask for (SEARCH_BUDGET_TOO_LONG).",
    )
    max_search_trials: int = Field(
        default=1000,
        ge=1,
        description="The largest max_trials a search may ask for (SEARCH_MAX_TRIALS_INVALID).",
    )
    estimate_min_cells: int = Field(
        default=1_000_000,
        ge=0,
        description=(
            "A create asks the Trainer for a quote (and is refused when its peak memory "
            "exceeds the Trainer's limit) when the job searches or its dataset has at least "
            "this many cells (rows x columns); smaller default jobs are queued without one."
        ),
    )
    deadline_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "How long past start_time + max_run_duration the watchdog waits for the Trainer's own "
            "DEADLINE_EXCEEDED before failing the job itself."
        ),
    )
    max_queued_seconds: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Fail a job still QUEUED this long after creation with QUEUED_TOO_LONG "
            "(0, the default, lets jobs wait for a Trainer indefinitely)."
        ),
    )
    watchdog_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the deadline watchdog looks for overdue jobs."
    )
    outbox_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Fallback interval of the outbox relay. It is woken at once by commits in this process "
            "and, on PostgreSQL, by LISTEN/NOTIFY for commits of other replicas."
        ),
    )
    outbox_batch_size: int = Field(
        default=200, ge=1, description="Outbox rows the relay publishes per pass."
    )
    outbox_retention_seconds: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "Published outbox rows are deleted after this long (kept for inspection until then)."
        ),
    )
    events_ack_wait_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "ack_wait of the `modelyard-jobs` consumer: an event not acked by then is redelivered."
        ),
    )
    watch_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "A watch with no event for this long re-reads the job from the database, so a missed "
            "NATS message (core NATS is at-most-once) cannot stall it."
        ),
    )
    api_token_default_lifetime_seconds: float = Field(
        default=90 * 86400.0,
        gt=0,
        description="How long an API token works when CreateApiToken gives no `expires_in`.",
    )
    api_token_max_lifetime_seconds: float = Field(
        default=366 * 86400.0,
        gt=0,
        description="The longest `expires_in` CreateApiToken accepts (API_TOKEN_LIFETIME_INVALID).",
    )
    fault_crash_after_commit: bool = Field(
        default=False,
        description=(
            "TEST ONLY: exit the process (code 137) right after CreateTrainingJob commits and "
            "before anything is published (the outbox relay does not run in this mode), to test "
            "the outbox's crash safety. Never set in production."
        ),
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'jobs.db').resolve()}"
