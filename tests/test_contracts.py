"""The contracts follow the rules DESIGN.md holds them to (buf style, AIP).

Checked on the compiled descriptors, so a new RPC or message that breaks a rule
fails here before any client meets it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FileDescriptor,
    MethodDescriptor,
)

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2
from modelyard.dispatch.v1 import dispatch_pb2
from modelyard.jobs.v1 import jobs_service_pb2, training_job_pb2
from modelyard.training.v1 import model_pb2, trainer_service_pb2

FILES: list[FileDescriptor] = [
    dataset_pb2.DESCRIPTOR,
    dataset_service_pb2.DESCRIPTOR,
    training_job_pb2.DESCRIPTOR,
    jobs_service_pb2.DESCRIPTOR,
    dispatch_pb2.DESCRIPTOR,
    model_pb2.DESCRIPTOR,
    trainer_service_pb2.DESCRIPTOR,
]
SERVICE_FILES = [
    dataset_service_pb2.DESCRIPTOR,
    jobs_service_pb2.DESCRIPTOR,
    trainer_service_pb2.DESCRIPTOR,
]
REPO_ROOT = Path(__file__).resolve().parent.parent


def methods() -> Iterator[MethodDescriptor]:
    for file in SERVICE_FILES:
        for service in file.services_by_name.values():
            yield from service.methods


def all_messages(descriptor: Descriptor | FileDescriptor) -> Iterator[Descriptor]:
    children = (
        descriptor.message_types_by_name.values()
        if isinstance(descriptor, FileDescriptor)
        else descriptor.nested_types
    )
    for message in children:
        if message.GetOptions().map_entry:
            continue
        yield message
        yield from all_messages(message)


def all_enums() -> Iterator[EnumDescriptor]:
    for file in FILES:
        yield from file.enum_types_by_name.values()
        for message in all_messages(file):
            yield from message.enum_types


def upload_header_or_request(method: MethodDescriptor) -> Descriptor:
    """The request message, or for a client stream its header message (fields of the call)."""
    request = method.input_type
    header = request.fields_by_name.get("header")
    if header is not None and header.message_type is not None:
        return header.message_type
    return request


def http_rule(method: MethodDescriptor) -> object:
    return method.GetOptions().Extensions[annotations_pb2.http]


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_package_matches_folder_and_version(file: FileDescriptor) -> None:
    assert re.fullmatch(r"modelyard\.(dataset|jobs|training|dispatch)\.v1", file.package)
    assert file.name.startswith(file.package.replace(".", "/") + "/")


def imports_of(file: FileDescriptor) -> Iterator[FileDescriptor]:
    for dependency in file.dependencies:
        yield dependency
        yield from imports_of(dependency)


@pytest.mark.parametrize(
    "file", [f for f in FILES if f is not dispatch_pb2.DESCRIPTOR], ids=lambda f: f.name
)
def test_public_contracts_do_not_expose_the_internal_messages(file: FileDescriptor) -> None:
    # The NATS messages may change with the services that exchange them: a
    # public file that imported them would publish them to every client.
    assert dispatch_pb2.DESCRIPTOR.name not in {f.name for f in imports_of(file)}
    assert not dispatch_pb2.DESCRIPTOR.services_by_name


def test_services_are_named_service() -> None:
    for file in SERVICE_FILES:
        for name in file.services_by_name:
            assert name.endswith("Service")


@pytest.mark.parametrize("method", list(methods()), ids=lambda m: m.full_name)
def test_every_rpc_has_an_http_annotation(method: MethodDescriptor) -> None:
    rule = http_rule(method)
    pattern = rule.WhichOneof("pattern")  # type: ignore[attr-defined]
    assert pattern in {"get", "post", "delete", "patch", "put"}
    assert getattr(rule, pattern).startswith("/v1/")


@pytest.mark.parametrize("method", list(methods()), ids=lambda m: m.full_name)
def test_request_and_response_names(method: MethodDescriptor) -> None:
    assert method.input_type.name == f"{method.name}Request"
    if method.output_type.file.package.startswith("modelyard"):
        resource_names = {"Dataset", "TrainingJob", "Model"}
        assert method.output_type.name in resource_names | {f"{method.name}Response"}


@pytest.mark.parametrize(
    "method", [m for m in methods() if m.name.startswith("List")], ids=lambda m: m.full_name
)
def test_list_rpcs_paginate(method: MethodDescriptor) -> None:
    assert {"page_size", "page_token"} <= set(method.input_type.fields_by_name)
    assert "next_page_token" in method.output_type.fields_by_name


@pytest.mark.parametrize(
    "method",
    [m for m in methods() if m.name.startswith(("Create", "Upload"))],
    ids=lambda m: m.full_name,
)
def test_create_rpcs_take_a_request_id(method: MethodDescriptor) -> None:
    assert "request_id" in upload_header_or_request(method).fields_by_name


@pytest.mark.parametrize("enum", list(all_enums()), ids=lambda e: e.full_name)
def test_enums_have_a_prefixed_unspecified_zero(enum: EnumDescriptor) -> None:
    zero = enum.values_by_number[0].name
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
    assert zero == f"{prefix}_UNSPECIFIED"


def field_behaviors(field: object) -> list[int]:
    options = field.GetOptions()  # type: ignore[attr-defined]
    return list(options.Extensions[field_behavior_pb2.field_behavior])


@pytest.mark.parametrize("method", list(methods()), ids=lambda m: m.full_name)
def test_request_fields_declare_their_behaviour(method: MethodDescriptor) -> None:
    request = upload_header_or_request(method)
    missing = [f.name for f in request.fields if not field_behaviors(f) and f.name != "chunk"]
    assert missing == []


def test_resource_output_fields_are_marked_output_only() -> None:
    for resource, server_owned in [
        (dataset_pb2.Dataset.DESCRIPTOR, ["dataset_id", "state", "sha256", "create_time"]),
        (training_job_pb2.TrainingJob.DESCRIPTOR, ["job_id", "state", "metrics", "mlflow"]),
    ]:
        for name in server_owned:
            behaviours = field_behaviors(resource.fields_by_name[name])
            assert field_behavior_pb2.OUTPUT_ONLY in behaviours, f"{resource.name}.{name}"


def test_metric_keys_of_the_design_are_documented_on_the_job() -> None:
    # The metric keys are a contract with outside clients: the proto names each one.
    proto = REPO_ROOT / "protos" / "modelyard" / "jobs" / "v1" / "training_job.proto"
    text = proto.read_text()
    for key in ["accuracy", "f1", "macro_f1", "roc_auc", "log_loss", "precision", "recall"]:
        assert f"`{key}`" in text
    for key in ["rmse", "mae", "r2", "mse"]:
        assert f"`{key}`" in text


def test_job_states_are_the_design_states() -> None:
    states = [v.name for v in training_job_pb2.TrainingJob.State.DESCRIPTOR.values][1:]
    assert states == ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED"]
