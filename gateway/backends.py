"""One long-lived gRPC channel per backend, and a ready-made callable per route.

The channels come from `runtime.channels.open_channel`, so every call carries
the service token; the gateway adds the request id and the deadline itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.descriptors import SERVICES
from gateway.routes import Route, RouteKind
from gateway.settings import GatewaySettings
from modelyard.access.v1 import access_service_pb2, access_service_pb2_grpc
from runtime.channels import open_channel
from runtime.wire import serialized


class Backends:
    def __init__(self, settings: GatewaySettings, routes: Sequence[Route]) -> None:
        self._settings = settings
        self._routes = routes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}

    async def open(self) -> None:
        """Create the channels; must run inside the event loop that will use them."""
        for name, address in self._settings.backend_addresses().items():
            self._channels[name] = open_channel(
                address,
                self._settings,
                stream_timeout_seconds=self._settings.stream_timeout_seconds,
            )
        for route in self._routes:
            self._stubs[route.grpc_path] = self._stub(route)

    def _stub(self, route: Route) -> Any:
        channel = self._channels[route.backend]
        serializer: Any = route.request_class.SerializeToString
        if route.kind is RouteKind.UPLOAD:
            serializer = serialized  # its chunk messages come encoded (streaming.rechunk)
        deserializer = route.response_class.FromString
        if route.kind is RouteKind.UNARY:
            factory = channel.unary_unary
        elif route.kind is RouteKind.UPLOAD:
            factory = channel.stream_unary
        else:
            factory = channel.unary_stream
        return factory(
            route.grpc_path,
            request_serializer=serializer,
            response_deserializer=deserializer,
        )

    def stub(self, route: Route) -> Any:
        return self._stubs[route.grpc_path]

    async def authenticate_api_token(self, token: str) -> tuple[str, int, float]:
        """A project API token's (project, role, expire time as epoch seconds), from the
        Jobs service; its AioRpcError (UNAUTHENTICATED for a bad token) otherwise."""
        stub = access_service_pb2_grpc.AccessServiceStub(self._channels["jobs"])
        reply = await stub.AuthenticateApiToken(
            access_service_pb2.AuthenticateApiTokenRequest(token=token),
            timeout=self._settings.default_timeout_seconds,
        )
        return reply.project_id, reply.role, reply.expire_time.ToDatetime().timestamp()

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))
        self._channels.clear()
        self._stubs.clear()

    async def readiness(self) -> dict[str, str]:
        """Backend name → its health status name (or UNREACHABLE)."""
        names = {backend: service for service, (_, backend) in SERVICES.items()}
        results = await asyncio.gather(
            *(self._health(self._channels[name], service) for name, service in names.items())
        )
        return dict(zip(names, results, strict=True))

    async def _health(self, channel: grpc.aio.Channel, service: str) -> str:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self._settings.readiness_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
