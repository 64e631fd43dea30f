"""Settings every process shares; each service subclasses `CommonSettings`.

Service-specific fields are read from `MODELYARD_<SERVICE>_<FIELD>` (the
subclass sets `env_prefix`); the fields below are the same secret or knob for
every process, so they are read from one global name each.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.secrets import load_or_create_secret


class CommonSettings(BaseSettings):
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
