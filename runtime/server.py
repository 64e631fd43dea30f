"""The asyncio gRPC server every service runs.

Every server has the health and reflection (v1 and v1alpha) services, the service-token and
request-context interceptors, optional (mutual) TLS, and shuts down gracefully:
on SIGTERM or SIGINT health turns NOT_SERVING first, so load balancers stop
sending new calls, then `server.stop(grace)` lets calls in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runtime.interceptors import (
    ApiTokenResolver,
    RequestContextInterceptor,
    ServiceTokenInterceptor,
)
from runtime.metrics import serve_metrics
from runtime.reflection import enable_reflection
from runtime.settings import CommonSettings

logger = logging.getLogger("modelyard.server")

# Messages up to 64 MiB: Predict batches and Arrow record batches can be large.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


class GrpcServer:
    """Add servicers to `.server`, call `enable` for each, then `start`."""

    def __init__(
        self,
        settings: CommonSettings,
        listen_address: str,
        metrics_address: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
        resolve_api_token: ApiTokenResolver | None = None,
    ) -> None:
        self._settings = settings
        self._listen_address = listen_address
        self._metrics_address = metrics_address
        self._service_names: list[str] = []
        self._stopping = False
        self.server = grpc.aio.server(
            interceptors=[
                ServiceTokenInterceptor(settings.resolved_service_tokens(), resolve_api_token),
                RequestContextInterceptor(),
            ],
            options=[*CHANNEL_OPTIONS, *options],
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)

    def enable(self, *services: ServiceDescriptor) -> None:
        """Announce servicers already added to `.server` through health and reflection."""
        self._service_names.extend(service.full_name for service in services)

    async def start(self) -> None:
        serve_metrics(self._metrics_address)
        enable_reflection([*self._service_names, health.SERVICE_NAME], self.server)
        self._bind()
        await self.server.start()
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "serving",
            extra={"address": self._listen_address, "services": self._service_names},
        )

    def _bind(self) -> None:
        settings = self._settings
        if settings.tls_cert_file and settings.tls_key_file:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
                root_certificates=(
                    settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None
                ),
                require_client_auth=settings.tls_ca_file is not None,
            )
            self.server.add_secure_port(self._listen_address, credentials)
        else:
            self.server.add_insecure_port(self._listen_address)

    async def follow_dependencies(
        self, checks: Sequence[Callable[[], Awaitable[bool]]], interval_seconds: float = 2.0
    ) -> None:
        """Keep the named services' health on what they need (NATS, a database): NOT_SERVING
        while any check fails, so /readyz and readiness probes send no calls there. The
        server's own status ("") stays SERVING while the process lives, so a liveness probe
        does not restart a process that only waits for a dependency. Runs until cancelled."""
        ready = True
        while True:
            await asyncio.sleep(interval_seconds)
            now = all([await check() for check in checks])
            if now != ready and not self._stopping:
                ready = now
                status = health_pb2.HealthCheckResponse.SERVING
                if not ready:
                    status = health_pb2.HealthCheckResponse.NOT_SERVING
                for name in self._service_names:
                    await self._health.set(name, status)
                logger.warning("dependencies %s", "back" if ready else "down; not ready")

    async def stop(self) -> None:
        self._stopping = True
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        logger.info("stopping", extra={"grace_seconds": self._settings.shutdown_grace_seconds})
        await self.server.stop(self._settings.shutdown_grace_seconds)


async def wait_for_shutdown_signal(signals: Sequence[signal.Signals] = ()) -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals or (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("shutdown signal received")
