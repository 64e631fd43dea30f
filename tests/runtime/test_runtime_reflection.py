"""Server reflection on a real server: v1 (what newer tools ask for, and some ask
for nothing else) and v1alpha (grpcurl 1.8) both list the services and describe
them, without a service token."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_tools import protoc

from devstack.processes import free_port, venv_bin
from modelyard.jobs.v1 import jobs_service_pb2, jobs_service_pb2_grpc
from runtime.server import GrpcServer
from runtime.settings import CommonSettings

# grpc/reflection/v1/reflection.proto as gRPC publishes it (comments left out):
# the client below knows this version and no other.
REFLECTION_V1_PROTO = """
syntax = "proto3";
package grpc.reflection.v1;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest {
  string containing_type = 1;
  int32 extension_number = 2;
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse {
  string base_type_name = 1;
  repeated int32 extension_number = 2;
}
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse {
  int32 error_code = 1;
  string error_message = 2;
}
"""
JOBS_SERVICE = "modelyard.jobs.v1.JobsService"


@pytest.fixture(scope="module")
def v1_messages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, type[Message]]:
    """The v1 client's message classes, compiled here into a pool of their own."""
    folder = tmp_path_factory.mktemp("reflection_v1")
    (folder / "reflection.proto").write_text(REFLECTION_V1_PROTO)
    descriptor_set = folder / "reflection.binpb"
    assert protoc.main(["protoc", f"-I{folder}", f"-o{descriptor_set}", "reflection.proto"]) == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}")
        )
        for name in ["ServerReflectionRequest", "ServerReflectionResponse"]
    }


class Jobs(jobs_service_pb2_grpc.JobsServiceServicer):
    pass


@pytest.fixture(scope="module")
async def server_address() -> AsyncIterator[str]:
    address = f"127.0.0.1:{free_port()}"
    server = GrpcServer(CommonSettings(service_token="secret"), address)
    servicer = Jobs()  # type: ignore[abstract]  # reflection only: no RPC is called
    jobs_service_pb2_grpc.add_JobsServiceServicer_to_server(servicer, server.server)
    server.enable(jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"])
    await server.start()
    yield address
    await server.stop()


async def ask_v1(
    address: str, messages: dict[str, type[Message]], **request: Any
) -> Any:  # a ServerReflectionResponse of the client's own classes
    request_class, response_class = (
        messages["ServerReflectionRequest"],
        messages["ServerReflectionResponse"],
    )
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        responses = [
            response async for response in call(iter([request_class(**request)]), timeout=10)
        ]
    assert len(responses) == 1
    return responses[0]


async def test_a_v1_client_lists_the_services(
    server_address: str, v1_messages: dict[str, type[Message]]
) -> None:
    response = await ask_v1(server_address, v1_messages, list_services="")
    assert response.WhichOneof("message_response") == "list_services_response"
    names = {service.name for service in response.list_services_response.service}
    assert {
        JOBS_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


async def test_a_v1_client_describes_a_service_with_its_imports(
    server_address: str, v1_messages: dict[str, type[Message]]
) -> None:
    response = await ask_v1(server_address, v1_messages, file_containing_symbol=JOBS_SERVICE)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in response.file_descriptor_response.file_descriptor_proto
    ]
    by_name = {file.name: file for file in files}
    jobs_file = by_name["modelyard/jobs/v1/jobs_service.proto"]
    assert [service.name for service in jobs_file.service] == ["JobsService"]
    # Everything needed to build the client comes along, the internal messages do not.
    assert {"modelyard/jobs/v1/training_job.proto", "google/api/annotations.proto"} <= set(by_name)
    assert not any(name.startswith("modelyard/dispatch/") for name in by_name)


async def test_a_v1_client_gets_not_found_for_an_unknown_symbol(
    server_address: str, v1_messages: dict[str, type[Message]]
) -> None:
    response = await ask_v1(server_address, v1_messages, file_containing_symbol="no.such.Thing")
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the server under test runs on this event loop.
    return await asyncio.to_thread(
        subprocess.run,
        [venv_bin("grpcurl"), "-plaintext", "-max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_grpcurl_lists_and_describes_through_v1alpha(server_address: str) -> None:
    listed = await grpcurl(server_address, "list")
    assert listed.returncode == 0, listed.stderr
    assert JOBS_SERVICE in listed.stdout.split()
    assert "grpc.reflection.v1.ServerReflection" in listed.stdout.split()
    described = await grpcurl(server_address, "describe", "grpc.reflection.v1.ServerReflection")
    assert described.returncode == 0, described.stderr
    assert "rpc ServerReflectionInfo" in described.stdout
