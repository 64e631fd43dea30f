"""The NATS setup step: create the streams and key-value buckets, as the setup identity.

Services may only look streams and buckets up (runtime/nats_access.py), so this runs
before them: `make up` and the test fixtures call `set_up`, compose runs it as a one-shot
service and Kubernetes as a Job:

    MODELYARD_NATS_SETUP_URL=nats://nats:4222 MODELYARD_NATS_SETUP_USER=modelyard-admin \\
    MODELYARD_NATS_SETUP_PASSWORD=... python -m runtime.nats_setup

It is idempotent: streams are brought up to date, existing buckets are kept.
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.app import StartupError
from runtime.messaging import (
    NatsCredentials,
    close_quietly,
    connect_at_start,
    ensure_buckets,
    ensure_streams,
)


class NatsSetupSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_NATS_SETUP_", extra="ignore", frozen=True, populate_by_name=True
    )

    url: str = Field(default="nats://127.0.0.1:4222", description="NATS server(s).")
    user: str = Field(default="", description="The setup identity; empty connects anonymously.")
    password: SecretStr = Field(default=SecretStr(""), description="Its password.")
    connect_timeout_seconds: float = Field(default=60.0, gt=0)

    def credentials(self) -> NatsCredentials | None:
        if not self.user:
            return None
        return NatsCredentials(self.user, self.password.get_secret_value())


async def set_up(
    url: str, credentials: NatsCredentials | None, timeout_seconds: float = 30.0
) -> None:
    nc = await connect_at_start(
        url, "nats-setup", timeout_seconds, "MODELYARD_NATS_SETUP_URL", credentials
    )
    try:
        js = nc.jetstream(timeout=10)
        await ensure_streams(js)
        await ensure_buckets(js)
    finally:
        await close_quietly(nc)


def main() -> int:
    settings = NatsSetupSettings()
    try:
        asyncio.run(set_up(settings.url, settings.credentials(), settings.connect_timeout_seconds))
    except StartupError as error:
        print(f"nats setup failed: {error}", file=sys.stderr)
        return 1
    print("nats setup done: streams and buckets are in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
