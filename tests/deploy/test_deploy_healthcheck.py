"""`python -m runtime.healthcheck` against a real `GrpcServer`, plain and with mutual TLS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.processes import free_port
from devstack.tls import Tls, make_tls
from modelyard.dataset.v1 import dataset_service_pb2
from runtime.healthcheck import check, main
from runtime.server import GrpcServer
from runtime.settings import CommonSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_SERVICE = dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
async def plain_server() -> AsyncIterator[str]:
    address = f"127.0.0.1:{free_port()}"
    server = GrpcServer(CommonSettings(service_token="token"), address)
    server.enable(DATASET_SERVICE)
    await server.start()
    yield address
    await server.stop()


@pytest.fixture(scope="module")
async def tls_server(tls: Tls) -> AsyncIterator[str]:
    address = f"127.0.0.1:{free_port()}"
    server = GrpcServer(tls.settings(), address)
    await server.start()
    yield address
    await server.stop()


PLAIN = CommonSettings(service_token="token")


async def status(address: str, service: str = "", settings: CommonSettings = PLAIN) -> str:
    # The check is a blocking client: run it off the loop that serves the server.
    return await asyncio.to_thread(check, address, service, settings=settings, timeout=2.0)


async def test_a_serving_server_and_its_announced_service_are_serving(plain_server: str) -> None:
    assert await status(plain_server) == "SERVING"
    assert await status(plain_server, DATASET_SERVICE.full_name) == "SERVING"


async def test_a_service_the_server_does_not_run_is_not_serving(plain_server: str) -> None:
    assert await status(plain_server, "modelyard.jobs.v1.JobsService") == "NOT_FOUND"
    assert await asyncio.to_thread(main, [plain_server, "modelyard.jobs.v1.JobsService"]) == 1


async def test_exit_code_is_zero_only_when_serving(plain_server: str) -> None:
    assert await asyncio.to_thread(main, [plain_server, "--timeout", "2"]) == 0
    assert await asyncio.to_thread(main, [f"127.0.0.1:{free_port()}", "--timeout", "1"]) == 1


async def test_a_stopped_server_is_not_serving() -> None:
    address = f"127.0.0.1:{free_port()}"
    server = GrpcServer(CommonSettings(service_token="token"), address)
    await server.start()
    assert await status(address) == "SERVING"
    await server.stop()
    assert await status(address) == "UNAVAILABLE"


async def test_mutual_tls_server_answers_a_check_with_the_tls_settings(
    tls: Tls, tls_server: str
) -> None:
    assert await status(tls_server, settings=tls.settings()) == "SERVING"
    # Plain text cannot talk to it: a health check without the TLS settings fails.
    assert await status(tls_server) == "UNAVAILABLE"


async def test_command_line_reads_tls_settings_from_the_environment(
    tls: Tls, tls_server: str
) -> None:
    """The way a compose health check runs it: a new process with the container's env."""
    env = {"PATH": os.environ.get("PATH", ""), **tls.env()}

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runtime.healthcheck", *arguments],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    served = await asyncio.to_thread(run, tls_server, "--server-name", "localhost")
    assert served.returncode == 0, served.stdout + served.stderr
    assert "SERVING" in served.stdout
    env.pop("MODELYARD_TLS_CA_FILE")
    env.pop("MODELYARD_TLS_CERT_FILE")
    env.pop("MODELYARD_TLS_KEY_FILE")
    refused = await asyncio.to_thread(run, tls_server, "--timeout", "2")
    assert refused.returncode == 1
