"""Proto3 JSON out, as `json_format.MessageToDict(always_print_fields_with_no_presence=True)`
writes it, from a printer planned once per message type.

`MessageToDict` decides everything again for every field of every message: its
kind, its JSON name, whether it is a map, how to write its value. A 1,000-row
Predict answer is 1,000 `Prediction` messages, and that walk was most of the
gateway's time for it. `JsonOut` makes those decisions once per message type
(a converter per field) and then only reads values. Types it does not plan
(maps, well-known types other than `Value`, enum values with JSON options) are
written by `MessageToDict` itself, and any error makes it write the whole
message by `MessageToDict` again, so its output and its errors are
`MessageToDict`'s (tests/gateway/test_gateway_transcoding.py compares them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.descriptors import descriptor_of

Converter = Callable[[Any], Any]

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INT32_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
    }
)
VALUE = "google.protobuf.Value"


def generic(message: Message) -> dict[str, Any]:
    document: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )
    return document


class _Plan:
    """One message type: a converter per field number, and what an unset field writes."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.converters: dict[int, Converter] = {}
        self.repeated: dict[int, bool] = {}
        self.defaults: list[tuple[str, Any]] = []  # fields without presence, in order


class JsonOut:
    def __init__(self) -> None:
        self._plans: dict[str, _Plan | None] = {}

    def to_dict(self, message: Message) -> dict[str, Any]:
        plan = self._plan(descriptor_of(message))
        if plan is None:
            return generic(message)
        try:
            return self._object(message, plan)
        except Exception:  # MessageToDict's own error, or its answer where ours differs
            return generic(message)

    def _object(self, message: Message, plan: _Plan) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for field, value in message.ListFields():
            number = field.number
            convert = plan.converters[number]
            if plan.repeated[number]:
                document[plan.names[number]] = [convert(item) for item in value]
            else:
                document[plan.names[number]] = convert(value)
        for name, default in plan.defaults:
            if name not in document:
                document[name] = [] if default is _REPEATED else default
        return document

    def _plan(self, descriptor: Descriptor) -> _Plan | None:
        name = descriptor.full_name
        if name in self._plans:
            return self._plans[name]
        self._plans[name] = None  # a recursive type is written generically
        plan = _Plan()
        for field in descriptor.fields:
            convert = self._converter(field)
            if convert is None or field.is_extension:
                return None
            plan.names[field.number] = field.json_name
            plan.converters[field.number] = convert
            plan.repeated[field.number] = field.is_repeated
            if not field.has_presence:
                default = _REPEATED if field.is_repeated else convert(field.default_value)
                plan.defaults.append((field.json_name, default))
        self._plans[name] = plan
        return plan

    def _converter(self, field: FieldDescriptor) -> Converter | None:
        kind = field.type
        if kind in (FieldDescriptor.TYPE_DOUBLE,):
            return _double
        if kind in _INT64_TYPES:
            return str
        if kind in _INT32_TYPES:
            return int
        if kind == FieldDescriptor.TYPE_BOOL:
            return bool
        if kind == FieldDescriptor.TYPE_STRING:
            return str
        if kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            return _enum_converter(field.enum_type)
        if kind == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            message = field.message_type
            if message.GetOptions().map_entry:
                return None
            if message.full_name == VALUE:
                return _value
            if message.full_name.startswith("google.protobuf."):
                return generic
            plan = self._plan(message)
            if plan is None:
                return None
            return lambda item: self._object(item, plan)
        return None  # float32, bytes, groups: MessageToDict writes the message


class _Repeated:
    """Marks a repeated field's default: a new empty list each time."""


_REPEATED = _Repeated()


def _double(value: float) -> Any:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise ValueError("not finite: MessageToDict decides")
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    return json_format.MessageToDict(value, always_print_fields_with_no_presence=True)


def _enum_converter(enum: EnumDescriptor) -> Converter | None:
    names: dict[int, str] = {}
    for enum_value in enum.values:
        if enum_value.GetOptions().ListFields():  # e.g. a JSON name of its own
            return None
        names[enum_value.number] = enum_value.name
    if enum.full_name == "google.protobuf.NullValue":
        return lambda number: None

    def convert(number: int) -> Any:
        if number in names:
            return names[number]
        raise ValueError("unknown enum number: MessageToDict decides")

    return convert
