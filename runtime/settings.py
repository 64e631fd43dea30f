"""Settings every process shares; each service's one settings class subclasses
`CommonSettings` and the mixins below that fit it.

Service-specific fields are read from `MODELYARD_<SERVICE>_<FIELD>`: the
subclass sets only `model_config = SettingsConfigDict(env_prefix=...)`; pydantic
merges it with the configuration here. `CommonSettings`' own fields are the same
secret or knob for every process, so they are read from one global name each.

The mixins hold fields several services have, under each service's own prefix
(`MODELYARD_JOBS_NATS_URL`, `MODELYARD_TRAINER_NATS_URL`): written once, read
per process. Fields whose default differs per service (where a server listens)
are declared by the service with the shared annotated type, e.g.
`listen_address: ListenAddress = "127.0.0.1:50052"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime import limits
from runtime.secrets import load_or_create_secret

if TYPE_CHECKING:  # runtime.messaging imports this module through runtime.app
    from runtime.messaging import NatsCredentials

# Where a process's servers listen: each service gives its own default.
ListenAddress = Annotated[str, Field(description="host:port the gRPC server listens on.")]
MetricsAddress = Annotated[
    str,
    Field(description="host:port of the Prometheus endpoint (GET /metrics); empty turns it off."),
]


class CommonSettings(BaseSettings):
    # Every settings class: unknown variables ignored, immutable once read, fields
    # settable by name in tests. Subclasses add their `env_prefix`; pydantic merges.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    state_dir: Path = Field(
        default=Path(".modelyard"),
        validation_alias="MODELYARD_STATE_DIR",
        description="Where embedded defaults keep their files (SQLite, blobs, generated tokens).",
    )
    log_level: str = Field(default="INFO", validation_alias="MODELYARD_LOG_LEVEL")
    service_token: SecretStr | None = Field(
        default=None,
        validation_alias="MODELYARD_SERVICE_TOKEN",
        description=(
            "Shared secret every gRPC call between services carries; a comma-separated list "
            "'new,old' during a rotation (calls carry the first, servers accept any). When "
            "unset, one is generated once into <state_dir>/service-token and shared by every "
            "process on the machine."
        ),
    )
    tls_cert_file: Path | None = Field(default=None, validation_alias="MODELYARD_TLS_CERT_FILE")
    tls_key_file: Path | None = Field(default=None, validation_alias="MODELYARD_TLS_KEY_FILE")
    tls_ca_file: Path | None = Field(
        default=None,
        validation_alias="MODELYARD_TLS_CA_FILE",
        description="CA bundle: servers require client certificates signed by it (mutual TLS).",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, validation_alias="MODELYARD_SHUTDOWN_GRACE_SECONDS"
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias="MODELYARD_OTLP_ENDPOINT",
        description="OTLP/HTTP collector base URL (http://otel:4318); tracing is off when unset.",
    )
    rpc_timeout_seconds: float = Field(
        default=30.0,
        validation_alias="MODELYARD_RPC_TIMEOUT_SECONDS",
        description="Deadline of unary calls to other services.",
    )

    def resolved_service_tokens(self) -> list[str]:
        """Every token servers accept; the first is the one calls carry."""
        if self.service_token is not None:
            tokens = [t.strip() for t in self.service_token.get_secret_value().split(",")]
            if any(tokens):
                return [token for token in tokens if token]
        return [load_or_create_secret(self.state_dir / "service-token")]

    def resolved_service_token(self) -> str:
        return self.resolved_service_tokens()[0]


class NatsSettings(BaseSettings):
    """The NATS connection of a process that publishes or consumes (Jobs, Trainer)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS server(s) with JetStream, comma-separated.",
    )
    nats_connect_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description=(
            "At start, give up (and exit) when NATS cannot be reached, or its streams have "
            "not been set up, within this time."
        ),
    )
    nats_user: str = Field(
        default="",
        description=(
            "NATS user of this process (modelyard-jobs, modelyard-trainer: runtime/nats_access.py "
            "says what each may do); empty connects without credentials."
        ),
    )
    nats_password: SecretStr = Field(default=SecretStr(""), description="Its NATS password.")

    def nats_credentials(self) -> NatsCredentials | None:
        from runtime.messaging import NatsCredentials

        if not self.nats_user:
            return None
        return NatsCredentials(self.nats_user, self.nats_password.get_secret_value())


class DatasetClientSettings(BaseSettings):
    """A process that calls DatasetService (Jobs, Trainer, gateway)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    dataset_service_address: str = Field(
        default="127.0.0.1:50051", description="host:port of DatasetService."
    )


class TrainerClientSettings(BaseSettings):
    """A process that calls TrainerService (Jobs, gateway)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    trainer_service_address: str = Field(
        default="127.0.0.1:50053", description="host:port of TrainerService."
    )


class ApiTokenClientSettings(BaseSettings):
    """A service that accepts project API tokens and checks them with Jobs (Dataset,
    Trainer): runtime/access_client.py."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    api_token_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long an API token, once checked with the Jobs service, is trusted without "
            "asking again: a revoked token keeps working here for at most this long."
        ),
    )


class RunDurationSettings(BaseSettings):
    """How long a training job may run. Jobs refuses a job asking for more than the
    limit and the Trainer stops one at it, so both read the same two global
    variables: there is one limit, not one per service."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    default_max_run_duration_seconds: float = Field(
        default=limits.DEFAULT_MAX_RUN_DURATION_SECONDS,
        gt=0,
        validation_alias="MODELYARD_DEFAULT_MAX_RUN_DURATION_SECONDS",
        description="max_run_duration of a job that sets none.",
    )
    max_run_duration_limit_seconds: float = Field(
        default=limits.MAX_RUN_DURATION_LIMIT_SECONDS,
        gt=0,
        validation_alias="MODELYARD_MAX_RUN_DURATION_LIMIT_SECONDS",
        description="The largest max_run_duration a job may ask for (and the Trainer allows).",
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> RunDurationSettings:
        if self.default_max_run_duration_seconds > self.max_run_duration_limit_seconds:
            raise ValueError(
                "MODELYARD_DEFAULT_MAX_RUN_DURATION_SECONDS must not exceed "
                "MODELYARD_MAX_RUN_DURATION_LIMIT_SECONDS"
            )
        return self
