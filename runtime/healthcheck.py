"""`python -m runtime.healthcheck HOST:PORT [SERVICE]`: is a gRPC server SERVING?

Container health checks call it (the slim image has no grpc_health_probe or
grpcurl). It asks the standard health service and exits 0 when the answer is
SERVING, 1 for anything else: another status, an unknown service, a refused
connection, a timeout. TLS follows the process's own `MODELYARD_TLS_*`
settings, as `runtime.channels.open_channel` does, so a health check run inside
a container speaks to its server the way the other services do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.settings import CommonSettings

DEFAULT_TIMEOUT_SECONDS = 3.0


def check(
    address: str,
    service: str = "",
    *,
    settings: CommonSettings | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    server_name: str | None = None,
) -> str:
    """The health status name of `service` at `address` ("" = the whole server).

    Failures to get an answer are returned as the gRPC code's name
    (UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND for an unknown service...).
    """
    with _channel(address, settings or CommonSettings(), server_name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return str(code.name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _channel(address: str, settings: CommonSettings, server_name: str | None) -> grpc.Channel:
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None,
        private_key=settings.tls_key_file.read_bytes() if settings.tls_key_file else None,
        certificate_chain=settings.tls_cert_file.read_bytes() if settings.tls_cert_file else None,
    )
    return grpc.secure_channel(address, credentials, options=options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.healthcheck",
        description="Exit 0 when the gRPC server (or one of its services) is SERVING.",
    )
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="full service name; default: all")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS)
    parser.add_argument(
        "--server-name",
        help="TLS name to verify instead of the address's host (e.g. when checking 127.0.0.1)",
    )
    arguments = parser.parse_args(argv)
    status = check(
        arguments.address,
        arguments.service,
        timeout=arguments.timeout,
        server_name=arguments.server_name,
    )
    print(f"{arguments.address} {arguments.service or '<server>'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
