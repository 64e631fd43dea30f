"""The contracts follow buf's STANDARD lint rules and the Google AIPs.

`buf lint` (run by `make lint` and here) checks the .proto files; protos/buf.yaml
can only grant exceptions file by file, so this test holds them element by
element: the RPCs that return their resource (AIP-131/133/135/136) and the
enums whose values are unprefixed. A new RPC or enum in any file has to follow
STANDARD, and an exception in buf.yaml that nothing needs fails here too. The
descriptor checks below add what buf does not know (http annotations, paging,
request_id, field_behavior).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FileDescriptor,
    MethodDescriptor,
)

from modelyard.dispatch.v1 import dispatch_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
GENERATED_ROOT = REPO_ROOT / "modelyard"
BUF = REPO_ROOT / "tools" / "node_modules" / ".bin" / "buf"


def _generated_files() -> list[FileDescriptor]:
    """Every contract file, so that a new .proto is checked without being listed here."""
    modules = sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for path in GENERATED_ROOT.rglob("*_pb2.py")
    )
    return [importlib.import_module(module).DESCRIPTOR for module in modules]


FILES: list[FileDescriptor] = _generated_files()
SERVICE_FILES = [file for file in FILES if file.services_by_name]

# The exceptions to buf's STANDARD rules, one by one (protos/buf.yaml says why).
# RPCs that return their resource, or Empty/HttpBody, instead of `<Rpc>Response`:
RESOURCE_RETURNING_RPCS = {
    "modelyard.dataset.v1.DatasetService.UploadDataset": "modelyard.dataset.v1.Dataset",  # 133
    "modelyard.dataset.v1.DatasetService.GetDataset": "modelyard.dataset.v1.Dataset",  # 131
    "modelyard.dataset.v1.DatasetService.DeleteDataset": "google.protobuf.Empty",  # 135
    "modelyard.dataset.v1.DatasetService.DownloadDataset": "google.api.HttpBody",  # raw bytes
    "modelyard.jobs.v1.JobsService.CreateTrainingJob": "modelyard.jobs.v1.TrainingJob",  # 133
    "modelyard.jobs.v1.JobsService.GetTrainingJob": "modelyard.jobs.v1.TrainingJob",  # 131
    "modelyard.jobs.v1.JobsService.CancelTrainingJob": "modelyard.jobs.v1.TrainingJob",  # 136
    "modelyard.jobs.v1.JobsService.CreateScoringJob": "modelyard.jobs.v1.ScoringJob",  # 133
    "modelyard.jobs.v1.JobsService.GetScoringJob": "modelyard.jobs.v1.ScoringJob",  # 131
    "modelyard.jobs.v1.JobsService.CancelScoringJob": "modelyard.jobs.v1.ScoringJob",  # 136
    "modelyard.training.v1.TrainerService.GetModel": "modelyard.training.v1.Model",  # 131
}
# Nested enums whose values are the plain names REST clients see (AIP-216):
UNPREFIXED_ENUMS = {
    "modelyard.dataset.v1.Dataset.State",
    "modelyard.dataset.v1.Column.DataType",
    "modelyard.dataset.v1.DownloadDatasetRequest.Format",
    "modelyard.jobs.v1.TrainingJob.State",
    "modelyard.jobs.v1.ScoringJob.State",
    "modelyard.jobs.v1.TrainingJob.Task",
}


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
    assert re.fullmatch(r"modelyard\.(access|dataset|jobs|training|dispatch)\.v1", file.package)
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
    expected = RESOURCE_RETURNING_RPCS.get(
        method.full_name, f"{method.containing_service.file.package}.{method.name}Response"
    )
    assert method.output_type.full_name == expected


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
    others = [value.name for value in enum.values if value.number != 0]
    if enum.full_name in UNPREFIXED_ENUMS:
        assert enum.containing_type is not None, "unprefixed values only in a nested enum"
        assert not any(name.startswith(f"{prefix}_") for name in others)
    else:
        assert all(name.startswith(f"{prefix}_") for name in others)


# -- buf lint ----------------------------------------------------------------------------


def run_buf_lint(config: dict[str, object] | None = None) -> list[dict[str, object]]:
    """buf lint's findings on protos/ (with this config instead of buf.yaml if given)."""
    if not BUF.exists():
        pytest.fail(f"{BUF.relative_to(REPO_ROOT)} is missing: run `make install`")
    command = [str(BUF), "lint", "--error-format", "json"]
    if config is not None:
        command += ["--config", json.dumps(config)]
    result = subprocess.run(
        command, cwd=PROTO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    findings = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode in (0, 100), result.stderr  # 100: findings reported
    assert (result.returncode == 100) == bool(findings), result.stderr
    return findings


def buf_config() -> dict[str, object]:
    config = yaml.safe_load((PROTO_ROOT / "buf.yaml").read_text())
    assert isinstance(config, dict)
    return config


def element_lines() -> dict[tuple[str, int], str]:
    """(file, line) → the full name of the RPC or enum declared (or valued) on that line."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (GENERATED_ROOT / "descriptors.binpb").read_bytes()
    ).file
    lines: dict[tuple[str, int], str] = {}
    for file in files:
        if not file.name.startswith("modelyard/"):
            continue
        names = dict(_declarations(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            if name is not None:
                lines[(file.name, location.span[0] + 1)] = name
    return lines


Declarations = Iterator[tuple[tuple[int, ...], str]]


def _declarations(file: descriptor_pb2.FileDescriptorProto) -> Declarations:
    # Paths as SourceCodeInfo numbers them (descriptor.proto's field numbers).
    for s, service in enumerate(file.service):
        for m, method in enumerate(service.method):
            yield (6, s, 2, m), f"{file.package}.{service.name}.{method.name}"

    def enums(
        message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str
    ) -> Declarations:
        for e, enum in enumerate(message.enum_type):
            for v in range(len(enum.value)):
                yield (*path, 4, e, 2, v), f"{name}.{enum.name}"
        for n, nested in enumerate(message.nested_type):
            yield from enums(nested, (*path, 3, n), f"{name}.{nested.name}")

    for i, message in enumerate(file.message_type):
        yield from enums(message, (4, i), f"{file.package}.{message.name}")


def test_buf_lint_standard_is_clean() -> None:
    assert run_buf_lint() == []


def test_buf_exceptions_are_exactly_the_documented_ones() -> None:
    """Without buf.yaml's ignore_only, buf finds exactly the exceptions listed above."""
    config = buf_config()
    lint = config["lint"]
    assert isinstance(lint, dict)
    ignore_only: dict[str, list[str]] = lint.pop("ignore_only")
    lines = element_lines()
    elements: dict[str, set[str]] = defaultdict(set)
    files: dict[str, set[str]] = defaultdict(set)
    for finding in run_buf_lint(config):
        rule, path, line = str(finding["type"]), str(finding["path"]), finding["start_line"]
        assert isinstance(line, int)
        elements[rule].add(lines.get((path, line), f"{path}:{line}: {finding['message']}"))
        files[rule].add(path)
    assert dict(elements) == {
        "ENUM_VALUE_PREFIX": UNPREFIXED_ENUMS,
        "RPC_RESPONSE_STANDARD_NAME": set(RESOURCE_RETURNING_RPCS),
        # The RPCs that share a response type with another one.
        "RPC_REQUEST_RESPONSE_UNIQUE": {
            name
            for name, output in RESOURCE_RETURNING_RPCS.items()
            if list(RESOURCE_RETURNING_RPCS.values()).count(output) > 1
        },
    }
    assert {rule: set(paths) for rule, paths in ignore_only.items()} == dict(files)


NEW_FILE_BREAKING_THE_RULES = """
syntax = "proto3";
package modelyard.jobs.v1;
message Widget {
  enum Colour {
    COLOUR_UNSPECIFIED = 0;
    RED = 1;
  }
}
service WidgetService {
  rpc GetWidget(GetWidgetRequest) returns (Widget);
}
message GetWidgetRequest {}
"""


def test_buf_lint_holds_new_files_to_standard(tmp_path: Path) -> None:
    # On a copy of protos/ with one more file in a public package.
    copy = tmp_path / "protos"
    shutil.copytree(PROTO_ROOT, copy)
    (copy / "modelyard" / "jobs" / "v1" / "widget.proto").write_text(NEW_FILE_BREAKING_THE_RULES)
    result = subprocess.run(
        [str(BUF), "lint", "--error-format", "json"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert {(f["path"], f["type"]) for f in findings} == {
        ("modelyard/jobs/v1/widget.proto", "ENUM_VALUE_PREFIX"),
        ("modelyard/jobs/v1/widget.proto", "RPC_RESPONSE_STANDARD_NAME"),
    }
