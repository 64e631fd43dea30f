"""What the gateway knows of the contracts: the services it fronts, their
message classes, and the comments of the .proto files (for the OpenAPI document).

Everything comes from the generated modules and the descriptor set; nothing
here is specific to one RPC.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message

# Full service name → (generated module, backend name in the settings).
# AccessService is served by the Jobs service; it comes first, so that a backend's
# readiness is asked of its main service (the last one named for it).
SERVICES: dict[str, tuple[str, str]] = {
    "modelyard.access.v1.AccessService": (
        "modelyard.access.v1.access_service_pb2",
        "jobs",
    ),
    "modelyard.dataset.v1.DatasetService": (
        "modelyard.dataset.v1.dataset_service_pb2",
        "dataset",
    ),
    "modelyard.jobs.v1.JobsService": ("modelyard.jobs.v1.jobs_service_pb2", "jobs"),
    "modelyard.training.v1.TrainerService": (
        "modelyard.training.v1.trainer_service_pb2",
        "trainer",
    ),
}

DESCRIPTOR_SET_PATH = Path(importlib.import_module("modelyard").__file__ or ".").parent / (
    "descriptors.binpb"
)


def load_services(names: Sequence[str] = tuple(SERVICES)) -> list[ServiceDescriptor]:
    services: list[ServiceDescriptor] = []
    for name in names:
        module_name, _ = SERVICES[name]
        module = importlib.import_module(module_name)
        services.append(module.DESCRIPTOR.services_by_name[name.rsplit(".", 1)[1]])
    return services


def backend_of(service: ServiceDescriptor) -> str:
    return SERVICES[service.full_name][1]


def grpc_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@functools.cache
def _fields_by_any_name(message: Descriptor) -> dict[str, FieldDescriptor]:
    fields: dict[str, FieldDescriptor] = {}
    for field in message.fields:
        fields[field.json_name] = field
        fields[field.name] = field
    return fields


def find_field(message: Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its proto name (`page_size`) or its JSON name (`pageSize`)."""
    return _fields_by_any_name(message).get(name)


def is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return bool(entry is not None and entry.GetOptions().map_entry)


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def descriptor_of(message: Message | type[Message]) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)


class Comments:
    """Leading comments of the .proto files, by element full name.

    Keys: messages, enums, services (`pkg.Name`), fields and methods
    (`pkg.Name.member`), enum values (`pkg.Enum.VALUE`).
    """

    def __init__(self, files: Sequence[descriptor_pb2.FileDescriptorProto] = ()) -> None:
        self._text: dict[str, str] = {}
        for file in files:
            self._read_file(file)

    @classmethod
    def load(cls, path: Path = DESCRIPTOR_SET_PATH) -> Comments:
        if not path.exists():  # generated without comments: the document has no descriptions
            return cls()
        return cls(descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file)

    def get(self, full_name: str) -> str:
        return self._text.get(full_name, "")

    def of_message(self, message: Descriptor) -> str:
        return self.get(message.full_name)

    def of_field(self, field: FieldDescriptor) -> str:
        return self.get(field.full_name)

    def of_enum_value(self, enum: EnumDescriptor, value_name: str) -> str:
        return self.get(f"{enum.full_name}.{value_name}")

    def of_method(self, method: MethodDescriptor) -> str:
        return self.get(method.full_name)

    def _read_file(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        names = dict(self._element_names(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            if name and location.leading_comments:
                self._text[name] = _clean_comment(location.leading_comments)

    def _element_names(
        self, file: descriptor_pb2.FileDescriptorProto
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        # Numbers are the field numbers of descriptor.proto, as SourceCodeInfo paths use them.
        prefix = f"{file.package}." if file.package else ""
        for index, message in enumerate(file.message_type):
            yield from _message_names(message, (4, index), prefix + message.name)
        for index, enum in enumerate(file.enum_type):
            yield from _enum_names(enum, (5, index), prefix + enum.name)
        for index, service in enumerate(file.service):
            service_name = prefix + service.name
            yield (6, index), service_name
            for method_index, method in enumerate(service.method):
                yield (6, index, 2, method_index), f"{service_name}.{method.name}"


def _message_names(
    message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str
) -> Iterator[tuple[tuple[int, ...], str]]:
    yield path, name
    for index, field in enumerate(message.field):
        yield (*path, 2, index), f"{name}.{field.name}"
    for index, nested in enumerate(message.nested_type):
        yield from _message_names(nested, (*path, 3, index), f"{name}.{nested.name}")
    for index, enum in enumerate(message.enum_type):
        yield from _enum_names(enum, (*path, 4, index), f"{name}.{enum.name}")


def _enum_names(
    enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str
) -> Iterator[tuple[tuple[int, ...], str]]:
    yield path, name
    for index, value in enumerate(enum.value):
        yield (*path, 2, index), f"{name}.{value.name}"


def _clean_comment(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip()
