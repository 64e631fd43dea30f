"""HTTP request → protobuf request message, protobuf response → proto3 JSON.

Where the fields of a request come from (google/api/http.proto):
- path variables set the fields they name (they win over the body);
- `body: "*"` takes the whole request from the JSON body (no query parameters);
- `body: "<field>"` takes that field from the body, the rest from the query;
- no body: every field not in the path may come from the query:
  `?pageSize=10&state=RUNNING&a.b=1&tag=x&tag=y` (camelCase or snake_case names,
  nested fields with dots, a repeated field by repeating its parameter).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway import reasons
from gateway.descriptors import descriptor_of, find_field, is_map, is_repeated
from gateway.errors import invalid_argument
from gateway.json_out import JsonOut
from gateway.routes import Route

# Messages whose proto3 JSON form is a single string or number, usable as one query value.
SCALAR_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)

# Messages with a JSON form of their own: their insides are not fields to walk.
WELL_KNOWN_JSON = SCALAR_MESSAGES | {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Any",
    "google.protobuf.Empty",
}
NULL_VALUE = "google.protobuf.NullValue"

JSON_SEPARATORS = (",", ":")
JSON_OUT = JsonOut()  # MessageToDict's output, planned once per message type


class RequestBuilder:
    """Builds one route's request messages; what can be decided per route is decided once."""

    def __init__(self, route: Route) -> None:
        self.route = route
        descriptor = route.method.input_type
        fields = [find_field(descriptor, variable[0]) for variable in route.template.variables]
        # The common case, `/v1/things/{thing_id}`: set top-level string fields directly.
        self._direct_path_fields: tuple[str, ...] | None = None
        if all(
            len(variable) == 1 and field is not None and field.type == FieldDescriptor.TYPE_STRING
            for variable, field in zip(route.template.variables, fields, strict=True)
        ):
            self._direct_path_fields = tuple(f.name for f in fields if f is not None)

    def build(
        self, values: Sequence[str], query: Sequence[tuple[str, str]], body: bytes | None
    ) -> Message:
        route = self.route
        message = route.request_class()
        if body and route.body:
            _merge_body(message, route.body, body)
        elif route.body_required:
            raise invalid_argument(
                reasons.REQUEST_BODY_INVALID,
                "this route needs a JSON body with the request's fields",
            )
        if query:
            if not route.accepts_query:
                raise invalid_argument(
                    reasons.QUERY_PARAMETER_INVALID,
                    "this route takes its request from the JSON body, not query parameters",
                    parameter=query[0][0],
                )
            merge_query(message, query, route.bound_fields)
        if values:
            self._set_path_values(message, values)
        return message

    def _set_path_values(self, message: Message, values: Sequence[str]) -> None:
        if self._direct_path_fields is not None:
            for name, value in zip(self._direct_path_fields, values, strict=True):
                setattr(message, name, value)
            return
        document: dict[str, Any] = {}
        for variable, value in zip(self.route.template.variables, values, strict=True):
            target = document
            for name in variable[:-1]:
                target = target.setdefault(name, {})
            field = _leaf_field(descriptor_of(message), variable)
            target[variable[-1]] = _query_value(field, value, ".".join(variable))
        try:
            json_format.ParseDict(document, message)
        except Exception as error:  # anything the parser raises is about the client's input
            raise invalid_argument(reasons.PATH_PARAMETER_INVALID, _parse_message(error)) from error


def _leaf_field(message: Descriptor, path: Sequence[str]) -> FieldDescriptor:
    current: Descriptor | None = message
    found: FieldDescriptor | None = None
    for name in path:
        found = find_field(current, name) if current is not None else None
        if found is None:
            raise invalid_argument(reasons.PATH_PARAMETER_INVALID, f"no field {'.'.join(path)}")
        current = found.message_type
    assert found is not None
    return found


def parse_json(body: bytes, reason: str = reasons.REQUEST_BODY_INVALID) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise invalid_argument(reason, f"the request body is not valid JSON: {error}") from error


def _merge_body(message: Message, body_field: str, body: bytes) -> None:
    document = parse_json(body)
    if body_field == "*":
        if not isinstance(document, dict):
            raise invalid_argument(
                reasons.REQUEST_BODY_INVALID, "the request body must be a JSON object"
            )
    else:
        document = {body_field: document}
    problem = _enum_number(descriptor_of(message), document, "")
    if problem:
        raise invalid_argument(
            reasons.REQUEST_BODY_INVALID, f"{problem}: enum values are written as their names"
        )
    try:
        _parse_with_struct_lists(document, message)
    except Exception as error:  # anything the parser raises is about the client's input
        raise invalid_argument(reasons.REQUEST_BODY_INVALID, _parse_message(error)) from error


def _parse_with_struct_lists(document: dict[str, Any], message: Message) -> None:
    """`ParseDict`, with top-level lists of JSON objects into `repeated Struct` fields
    (Predict's rows) filled directly: ParseDict walks each value through generic
    descriptor code, about 6x slower, 70 ms of a 1,000-row Predict. Anything the
    direct fill does not take as ParseDict would is parsed by ParseDict after all, so
    the message and every error are ParseDict's."""
    lists: list[tuple[str, list[Any]]] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    rest = dict(document)
    for field in descriptor_of(message).fields:
        if not is_repeated(field) or field.message_type is None:
            continue
        keys = [key for key in {field.json_name, field.name} if key in rest]
        if len(keys) != 1:
            continue
        if field.message_type.full_name == "google.protobuf.Struct":
            if _is_list_of_objects(rest[keys[0]]):
                lists.append((field.name, rest.pop(keys[0])))
        elif _is_list_value_map(field) and _is_object_of_lists(rest[keys[0]]):
            tables.append((field.name, rest.pop(keys[0])))
    if not lists and not tables:
        json_format.ParseDict(document, message)
        return
    try:
        json_format.ParseDict(rest, message)
        for name, rows in lists:
            _fill_structs(getattr(message, name), rows)
        for name, columns in tables:
            _fill_list_values(getattr(message, name), columns)
    except Exception:
        message.Clear()
        json_format.ParseDict(document, message)


def _is_list_of_objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _is_list_value_map(field: FieldDescriptor) -> bool:
    """`map<string, google.protobuf.ListValue>` (Predict's columns)."""
    if not is_map(field) or field.message_type is None:
        return False
    key, value = (
        field.message_type.fields_by_name["key"],
        field.message_type.fields_by_name["value"],
    )
    return (
        key.type == FieldDescriptor.TYPE_STRING
        and value.message_type is not None
        and value.message_type.full_name == "google.protobuf.ListValue"
    )


def _is_object_of_lists(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(item, list) for item in value.values())


# A ListValue of numbers, as its wire form: per value the `values` tag (field 1,
# length-delimited) with length 9, the `number_value` tag (field 2, fixed64) and
# the little-endian double. Built as one array rather than a Value per cell.
_NUMBER_ITEM = np.dtype([("head", "S3"), ("number", "<f8")])
_NUMBER_HEAD = b"\x0a\x09\x11"


def _fill_list_values(container: Any, columns: dict[str, list[Any]]) -> None:
    """JSON arrays into ListValues, each value set as ParseDict sets a Value."""
    for key, values in columns.items():
        listed = container[key]
        if values and all(type(value) is float or type(value) is int for value in values):
            items = np.empty(len(values), dtype=_NUMBER_ITEM)
            items["head"] = _NUMBER_HEAD
            items["number"] = values  # an int beyond float64 raises: ParseDict decides
            listed.MergeFromString(items.tobytes())
            continue
        add = listed.values.add
        for value in values:
            kind = type(value)
            if value is None:
                add().null_value = 0
            elif kind is str:
                add().string_value = value
            elif kind is float or kind is int:
                add().number_value = value
            elif kind is bool:
                add().bool_value = value
            else:  # nested objects and lists: ParseDict's own way
                json_format.ParseDict(value, add())


def _fill_structs(container: Any, rows: list[dict[str, Any]]) -> None:
    """JSON objects into Structs, each value set as ParseDict sets a Value."""
    add = container.add
    for row in rows:
        fields = add().fields
        for key, value in row.items():
            kind = type(value)
            if value is None:
                fields[key].null_value = 0
            elif kind is str:
                fields[key].string_value = value
            elif kind is float or kind is int:
                fields[key].number_value = value
            elif kind is bool:
                fields[key].bool_value = value
            else:  # nested objects and lists: ParseDict's own way
                json_format.ParseDict(value, fields[key])


def _enum_number(message: Descriptor, document: Any, path: str) -> str | None:
    """The path of the first enum given as a number in `document`, if any.

    Proto3 JSON parsers also take enum numbers; the gateway takes only names, as its
    OpenAPI document says, so a number (often a client bug) never passes silently.
    """
    if not isinstance(document, dict) or message.full_name in WELL_KNOWN_JSON:
        return None
    for key, value in document.items():
        field = find_field(message, key) if isinstance(key, str) else None
        if field is None:
            continue  # the parser reports unknown fields
        element, values = _elements(field, value)
        where = f"{path}{key}"
        if element.enum_type is not None and element.enum_type.full_name != NULL_VALUE:
            if any(isinstance(item, int | float) and not isinstance(item, bool) for item in values):
                return where
        elif element.message_type is not None:
            for item in values:
                found = _enum_number(element.message_type, item, where + ".")
                if found:
                    return found
    return None


def _elements(field: FieldDescriptor, value: Any) -> tuple[FieldDescriptor, list[Any]]:
    """The field describing single values, and the single values of the field's JSON:
    a map's values, a list's items, or the value itself."""
    if is_map(field) and field.message_type is not None:
        values = list(value.values()) if isinstance(value, dict) else []
        return field.message_type.fields_by_name["value"], values
    if is_repeated(field):
        return field, value if isinstance(value, list) else []
    return field, [value]


def merge_query(
    message: Message, query: Sequence[tuple[str, str]], bound: frozenset[str] = frozenset()
) -> None:
    """Query parameters into `message`; unknown, bound or non-scalar names are refused."""
    document: dict[str, Any] = {}
    for key, value in query:
        _place(document, descriptor_of(message), key, value, bound)
    try:
        json_format.ParseDict(document, message)
    except Exception as error:  # anything the parser raises is about the client's input
        raise invalid_argument(reasons.QUERY_PARAMETER_INVALID, _parse_message(error)) from error


def _place(
    document: dict[str, Any], message: Descriptor, key: str, value: str, bound: frozenset[str]
) -> None:
    names = key.split(".")
    target = document
    descriptor: Descriptor | None = message
    for depth, name in enumerate(names):
        field = find_field(descriptor, name) if descriptor is not None else None
        if field is None:
            raise _query_error(key, f"unknown query parameter {key!r}")
        if depth == 0 and field.name in bound:
            raise _query_error(key, f"{key!r} is set by the path or the body, not the query")
        if depth < len(names) - 1:
            if not _is_nested_message(field):
                raise _query_error(key, f"{name!r} in {key!r} is not a message field")
            nested = target.setdefault(field.name, {})
            if not isinstance(nested, dict):
                raise _query_error(key, f"{key!r} conflicts with another parameter")
            target = nested
            descriptor = field.message_type
            continue
        converted = _query_value(field, value, key)
        if is_repeated(field):
            target.setdefault(field.name, []).append(converted)
        elif field.name in target:
            raise _query_error(key, f"{key!r} is given more than once")
        else:
            target[field.name] = converted


def _is_nested_message(field: FieldDescriptor) -> bool:
    return (
        field.message_type is not None
        and not is_repeated(field)
        and field.message_type.full_name not in SCALAR_MESSAGES
    )


def _query_value(field: FieldDescriptor, value: str, key: str) -> Any:
    """A query string value as the JSON value ParseDict expects for `field`."""
    if is_map(field) or (
        field.message_type is not None and field.message_type.full_name not in SCALAR_MESSAGES
    ):
        raise _query_error(key, f"{key!r} is a message or map field: set its fields instead")
    is_bool = field.type == FieldDescriptor.TYPE_BOOL or (
        field.message_type is not None
        and field.message_type.full_name == "google.protobuf.BoolValue"
    )
    if is_bool:
        if value not in ("true", "false"):
            raise _query_error(key, f"{key!r} must be true or false")
        return value == "true"
    if field.enum_type is not None and value.lstrip("-").isdigit():
        raise _query_error(key, f"{key!r} takes an enum value's name, not its number")
    # Proto3 JSON accepts numbers, enums, bytes and well-known types as strings.
    return value


def _query_error(key: str, message: str) -> Exception:
    return invalid_argument(reasons.QUERY_PARAMETER_INVALID, message, parameter=key)


def _parse_message(error: Exception) -> str:
    text = str(error)
    # ParseError lists every available field after a newline; the first line says it all.
    return text.split("\n", 1)[0].strip() or type(error).__name__


def to_json(message: Message) -> bytes:
    """Proto3 JSON: lowerCamelCase names, enums as names, 64-bit integers as strings.

    Fields without presence are written even when they hold their default, so a
    client always finds every scalar, list and map field; unset messages are omitted.
    """
    document = JSON_OUT.to_dict(message)
    return json.dumps(document, ensure_ascii=False, separators=JSON_SEPARATORS).encode()


def response_json(route: Route, message: Message) -> bytes:
    if not route.response_body:
        return to_json(message)
    document = JSON_OUT.to_dict(message)
    field = descriptor_of(message).fields_by_name[route.response_body]
    return json.dumps(
        document.get(field.json_name), ensure_ascii=False, separators=JSON_SEPARATORS
    ).encode()
