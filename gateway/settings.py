"""The gateway's one settings object, read from `MODELYARD_GATEWAY_*` variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from runtime.settings import (
    CommonSettings,
    DatasetClientSettings,
    MetricsAddress,
    TrainerClientSettings,
)

MIB = 1024 * 1024


def _split_commas(value: object) -> object:
    """`a, b,c` → ["a", "b", "c"]: list settings are comma-separated in the environment."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class GatewaySettings(CommonSettings, DatasetClientSettings, TrainerClientSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_GATEWAY_")

    host: str = Field(default="127.0.0.1", description="Interface the HTTP server listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port.")
    # Its own port, like every process's: the API port serves no /metrics, so publishing
    # the API does not publish the metrics.
    metrics_address: MetricsAddress = "127.0.0.1:9454"
    jobs_service_address: str = Field(
        default="127.0.0.1:50052", description="host:port of JobsService."
    )
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Bearer tokens clients may present, comma-separated (several at once allow "
            "rotation). When empty and dev mode is off, one is generated once into "
            "<state_dir>/api-token."
        ),
    )
    api_token_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long a project API token, once checked with the Jobs service, is trusted "
            "without asking again: a revoked token keeps working here for at most this long."
        ),
    )
    dev_mode: bool = Field(
        default=False,
        description="Accept requests without a bearer token. For a developer's own machine only.",
    )
    default_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Deadline of a unary call when the client sends no X-Request-Timeout.",
    )
    max_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Cap on the deadline a client may ask for."
    )
    stream_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Deadline of uploads, downloads, reads and watches (also the cap on theirs).",
    )
    max_body_bytes: int = Field(
        default=10 * MIB,
        gt=0,
        description="Largest JSON request body; uploads are streamed and bounded by the "
        "Dataset service instead.",
    )
    upload_chunk_bytes: int = Field(
        default=1 * MIB,
        gt=0,
        le=16 * MIB,
        description="Size of the chunk messages an upload body is cut into.",
    )
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated ('*' for any); empty turns CORS off.",
    )
    sse_keepalive_seconds: float = Field(
        default=15.0, gt=0, description="Interval of keep-alive comments on an idle watch."
    )
    public_url: str = Field(
        default="",
        description=(
            "Base URL clients reach the gateway at, such as https://modelyard.example.com, "
            "given as the OpenAPI document's `servers`; when empty, the URL the document "
            "was requested at."
        ),
    )
    legacy_routes: bool = Field(
        default=True,
        description=(
            "Serve the predecessor's routes (POST /datasets/upload, POST /models/train, "
            "GET /models/jobs/{job_id}) beside /v1; false answers them 404."
        ),
    )
    readiness_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Deadline of each backend health check behind /readyz."
    )

    @field_validator("api_tokens", "cors_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    def backend_addresses(self) -> dict[str, str]:
        """Backend name → address; the names match `routes.BACKEND_BY_SERVICE`."""
        return {
            "dataset": self.dataset_service_address,
            "jobs": self.jobs_service_address,
            "trainer": self.trainer_service_address,
        }
