"""Errors on the wire (`runtime/errors.py`): a status a client can read back, and one
that always fits in gRPC's trailers, whatever a handler put in it.

The over-long case runs through a real server: gRPC refuses trailers over its
metadata limit with RESOURCE_EXHAUSTED, which the gateway would turn into 429
and which would hide the real error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from devstack.processes import free_port
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.channels import open_channel
from runtime.errors import (
    MAX_STATUS_MESSAGE_CHARS,
    code_from_number,
    make_status,
    not_found,
    status_from_rpc_error,
    status_reason,
)
from runtime.server import GrpcServer
from runtime.settings import CommonSettings

SETTINGS = CommonSettings(service_token="errors-test")


class EchoingDatasets(dataset_service_pb2_grpc.DatasetServiceServicer):
    """Quotes the id it was given, as a careless handler would."""

    async def GetDataset(
        self, request: dataset_service_pb2.GetDatasetRequest, context: Any
    ) -> dataset_pb2.Dataset:
        raise not_found(
            "DATASET_NOT_FOUND",
            f"dataset {request.dataset_id!r} does not exist",
            dataset_id=request.dataset_id,
        )


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    listen = f"127.0.0.1:{free_port()}"
    server = GrpcServer(SETTINGS, listen)
    servicer = EchoingDatasets()  # type: ignore[abstract]  # only GetDataset is called
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server.server)
    await server.start()
    yield listen
    await server.stop()


@pytest.mark.parametrize("length", [10, 100_000])
async def test_an_error_quoting_any_input_reaches_the_client(address: str, length: int) -> None:
    async with open_channel(address, SETTINGS) as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.GetDataset(dataset_service_pb2.GetDatasetRequest(dataset_id="d" * length))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    status = status_from_rpc_error(failed.value)
    assert status_reason(status) == "DATASET_NOT_FOUND"
    assert len(status.message) <= MAX_STATUS_MESSAGE_CHARS


def test_a_status_round_trips_its_reason_and_code() -> None:
    status = make_status(grpc.StatusCode.FAILED_PRECONDITION, "DATASET_NOT_READY", "not yet")
    assert status_reason(status) == "DATASET_NOT_READY"
    assert code_from_number(status.code) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_from_number(999) == grpc.StatusCode.UNKNOWN


def test_metadata_is_bounded_in_size_and_count() -> None:
    from google.rpc import error_details_pb2

    status = make_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAM_INVALID",
        "m",
        {f"key{n}": "v" * 10_000 for n in range(100)},
    )
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert len(info.metadata) <= 16
    assert all(len(value) <= 256 for value in info.metadata.values())
    assert len(status.SerializeToString()) < 8 * 1024
