"""`python -m runtime.healthcheck` against a real `GrpcServer`, plain and with mutual TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack.processes import free_port
from modelyard.dataset.v1 import dataset_service_pb2
from runtime.healthcheck import check, main
from runtime.server import GrpcServer
from runtime.settings import CommonSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_SERVICE = dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"]


@dataclass
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def settings(self) -> CommonSettings:
        return CommonSettings(
            service_token="token",
            tls_ca_file=self.ca_file,
            tls_cert_file=self.cert_file,
            tls_key_file=self.key_file,
        )

    def env(self) -> dict[str, str]:
        return {
            "MODELYARD_TLS_CA_FILE": str(self.ca_file),
            "MODELYARD_TLS_CERT_FILE": str(self.cert_file),
            "MODELYARD_TLS_KEY_FILE": str(self.key_file),
        }


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(directory: Path) -> Tls:
    """A CA and one certificate for localhost that serves as server and client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("modelyard test CA"))
        .issuer_name(_name("modelyard test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    tls.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


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
