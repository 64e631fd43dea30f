"""The service-token check of every gRPC server, on a real server: one token,
or several during a rotation; health and reflection stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.processes import free_port
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.channels import open_channel
from runtime.errors import error_reason
from runtime.limits import CORRELATION_ID, correlation_id
from runtime.logs import current_context
from runtime.server import GrpcServer
from runtime.settings import CommonSettings


class Datasets(dataset_service_pb2_grpc.DatasetServiceServicer):
    async def GetDataset(
        self, request: dataset_service_pb2.GetDatasetRequest, context: Any
    ) -> dataset_pb2.Dataset:
        return dataset_pb2.Dataset(dataset_id=request.dataset_id)


@pytest.fixture
async def rotating_server() -> AsyncIterator[str]:
    """A server in the middle of a rotation: it accepts 'new' and 'old'."""
    address = f"127.0.0.1:{free_port()}"
    server = GrpcServer(CommonSettings(service_token="new, old"), address)
    servicer = Datasets()  # type: ignore[abstract]  # only GetDataset is called
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server.server)
    server.enable(dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"])
    await server.start()
    yield address
    await server.stop()


async def get(address: str, metadata: tuple[tuple[str, str], ...]) -> dataset_pb2.Dataset:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        request = dataset_service_pb2.GetDatasetRequest(dataset_id="d1")
        dataset: dataset_pb2.Dataset = await stub.GetDataset(request, timeout=5, metadata=metadata)
        return dataset


@pytest.mark.parametrize("token", ["new", "old"])
async def test_every_token_of_a_rotation_is_accepted(rotating_server: str, token: str) -> None:
    dataset = await get(rotating_server, (("authorization", f"Bearer {token}"),))
    assert dataset.dataset_id == "d1"


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer older"),), (("authorization", "Basic new"),)],
    ids=["missing", "wrong token", "wrong scheme"],
)
async def test_other_calls_are_unauthenticated(
    rotating_server: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await get(rotating_server, metadata)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(raised.value) == "SERVICE_TOKEN_INVALID"


async def test_a_client_sends_the_first_token_of_its_list(rotating_server: str) -> None:
    # A client still sending the old token during a rotation: the server takes it.
    settings = CommonSettings(service_token="old,new")
    assert settings.resolved_service_token() == "old"
    async with open_channel(rotating_server, settings) as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        dataset = await stub.GetDataset(dataset_service_pb2.GetDatasetRequest(dataset_id="d2"))
    assert dataset.dataset_id == "d2"


async def test_health_needs_no_token(rotating_server: str) -> None:
    async with grpc.aio.insecure_channel(rotating_server) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


class RequestIdEcho(dataset_service_pb2_grpc.DatasetServiceServicer):
    """Answers with the request id the server's log lines carry for the call."""

    async def GetDataset(
        self, request: dataset_service_pb2.GetDatasetRequest, context: Any
    ) -> dataset_pb2.Dataset:
        return dataset_pb2.Dataset(dataset_id=current_context()["request_id"])


@pytest.mark.parametrize(
    ("presented", "kept"),
    [
        ("req-42:retry/1", True),
        ("r" * 129, False),  # longer than the gateway keeps
        ('x", "level": "ERROR', False),  # quotes: would read as another log field
        ("id with spaces", False),
    ],
)
async def test_a_request_id_is_kept_by_the_same_rule_as_the_gateways(
    presented: str, kept: bool
) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = GrpcServer(CommonSettings(service_token="t"), address)
    servicer = RequestIdEcho()  # type: ignore[abstract]  # only GetDataset is called
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server.server)
    await server.start()
    try:
        metadata = (("authorization", "Bearer t"), ("x-request-id", presented))
        logged = (await get(address, metadata)).dataset_id
    finally:
        await server.stop()
    assert (logged == presented) is kept
    assert CORRELATION_ID.fullmatch(logged)
    assert (
        correlation_id(presented) == presented if kept else correlation_id(presented) != presented
    )
