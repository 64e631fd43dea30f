"""Fixtures of the gateway tests: fake backends, shared by the session, and real
gateway processes (`python -m gateway`), one per configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack.processes import free_port
from tests.gateway.gateway_doubles import (
    API_TOKENS,
    BODY_LIMIT,
    CORS_ORIGIN,
    PUBLIC_URL,
    Fakes,
    GatewayProcess,
    Recorder,
    start_fakes,
    start_gateway,
)


@pytest.fixture(scope="session")
async def fakes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fakes]:
    running = await start_fakes(tmp_path_factory.mktemp("fakes"))
    yield running
    for server in running.servers:
        await server.stop()


@pytest.fixture(scope="session")
async def gateway(
    fakes: Fakes, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """Authenticated, two tokens (rotation), a small body limit, CORS for one origin."""
    started = await start_gateway(
        tmp_path_factory.mktemp("gateway"),
        fakes.addresses,
        {
            "MODELYARD_GATEWAY_API_TOKENS": ",".join(API_TOKENS),
            "MODELYARD_GATEWAY_MAX_BODY_BYTES": str(BODY_LIMIT),
            "MODELYARD_GATEWAY_CORS_ALLOWED_ORIGINS": CORS_ORIGIN,
            "MODELYARD_GATEWAY_SSE_KEEPALIVE_SECONDS": "0.5",
            "MODELYARD_GATEWAY_MAX_TIMEOUT_SECONDS": "60",
        },
    )
    yield started
    started.process.stop()


@pytest.fixture(scope="session")
async def dev_gateway(
    fakes: Fakes, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    started = await start_gateway(
        tmp_path_factory.mktemp("dev-gateway"),
        fakes.addresses,
        {
            "MODELYARD_GATEWAY_DEV_MODE": "true",
            "MODELYARD_GATEWAY_PUBLIC_URL": PUBLIC_URL + "/",
            "MODELYARD_GATEWAY_LEGACY_ROUTES": "false",
        },
    )
    yield started
    started.process.stop()


@pytest.fixture(scope="session")
async def lone_gateway(
    fakes: Fakes, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """No token configured, no dev mode, and no Trainer listening."""
    addresses = {**fakes.addresses, "trainer": f"127.0.0.1:{free_port()}"}
    started = await start_gateway(tmp_path_factory.mktemp("lone-gateway"), addresses, {})
    yield started
    started.process.stop()


@pytest.fixture
def recorder(fakes: Fakes) -> Recorder:
    fakes.recorder.reset()
    return fakes.recorder
