"""The OpenAPI 3.0 document, generated from the route table and the proto descriptors.

Schemas follow the proto3 JSON mapping the gateway speaks: lowerCamelCase
names, 64-bit integers as strings (numbers accepted on input), enums as their
names, maps as objects, Timestamp as an RFC 3339 string, Duration as "1.5s",
Struct/Value as free JSON. `google.api.field_behavior` REQUIRED fields are
`required`, OUTPUT_ONLY fields `readOnly`. Descriptions are the .proto comments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway import legacy
from gateway.descriptors import Comments, find_field, is_map, is_repeated
from gateway.errors import HTTP_STATUS_BY_CODE
from gateway.routes import Route, RouteKind
from gateway.streaming import SSE_MEDIA_TYPE
from gateway.transcoding import SCALAR_MESSAGES

OPENAPI_VERSION = "3.0.3"
SCHEMA_PREFIX = "#/components/schemas/"
ERROR_SCHEMA = "Error"

INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
INT64_STRING = {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"}
UINT64_STRING = {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"}
INT64_NUMBER = {"type": "integer", "format": "int64", "minimum": -(2**63), "maximum": 2**63 - 1}
UINT64_NUMBER = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1}
NON_FINITE = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}

_T = FieldDescriptor
SCALARS: dict[int, dict[str, Any]] = {
    _T.TYPE_INT32: INT32,
    _T.TYPE_SINT32: INT32,
    _T.TYPE_SFIXED32: INT32,
    _T.TYPE_UINT32: UINT32,
    _T.TYPE_FIXED32: UINT32,
    # 64-bit integers are written as strings; parsers take numbers too.
    _T.TYPE_INT64: {"anyOf": [INT64_STRING, INT64_NUMBER]},
    _T.TYPE_SINT64: {"anyOf": [INT64_STRING, INT64_NUMBER]},
    _T.TYPE_SFIXED64: {"anyOf": [INT64_STRING, INT64_NUMBER]},
    _T.TYPE_UINT64: {"anyOf": [UINT64_STRING, UINT64_NUMBER]},
    _T.TYPE_FIXED64: {"anyOf": [UINT64_STRING, UINT64_NUMBER]},
    # Non-finite values are written as the strings "NaN", "Infinity", "-Infinity".
    _T.TYPE_DOUBLE: {"anyOf": [{"type": "number", "format": "double"}, NON_FINITE]},
    _T.TYPE_FLOAT: {"anyOf": [{"type": "number", "format": "float"}, NON_FINITE]},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte"},
}

# Query and path parameters: one plain value each.
PARAMETER_SCALARS: dict[int, dict[str, Any]] = {
    **SCALARS,
    _T.TYPE_INT64: INT64_STRING,
    _T.TYPE_SINT64: INT64_STRING,
    _T.TYPE_SFIXED64: INT64_STRING,
    _T.TYPE_UINT64: UINT64_STRING,
    _T.TYPE_FIXED64: UINT64_STRING,
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
}

WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 time in UTC, such as 2024-05-01T12:00:00Z.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$",
        "description": "Seconds with an `s` suffix, such as 3600s or 1.5s.",
    },
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated paths."},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {
        "type": "object",
        "additionalProperties": True,
        "description": "Any JSON object.",
    },
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": SCALARS[_T.TYPE_DOUBLE],
    "google.protobuf.FloatValue": SCALARS[_T.TYPE_FLOAT],
    "google.protobuf.Int64Value": SCALARS[_T.TYPE_INT64],
    "google.protobuf.UInt64Value": SCALARS[_T.TYPE_UINT64],
    "google.protobuf.Int32Value": INT32,
    "google.protobuf.UInt32Value": UINT32,
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}

API_DESCRIPTION = """\
REST face of modelyard, a self-hosted training platform for tabular data:
upload a CSV, train a LightGBM model of one of its columns, score new rows.

Every route translates to one gRPC call (proto3 JSON in and out; snake_case
field names are accepted on input too). Send `Authorization: Bearer <token>`.
Optional headers: `X-Request-Id` (echoed in the response and in the logs; one is
generated when absent) and `X-Request-Timeout` (seconds; the call's deadline).

Errors are `{"error": {"code", "status", "message", "details"}}`, the JSON form
of a google.rpc.Status; `details` holds a google.rpc.ErrorInfo whose `reason`
is a stable code to match on. HTTP codes follow google/rpc/code.proto."""


class SchemaBuilder:
    """Component schemas for messages and enums, built as they are referenced."""

    def __init__(self, comments: Comments) -> None:
        self.comments = comments
        self.schemas: dict[str, dict[str, Any]] = {}

    def message_ref(self, message: Descriptor) -> dict[str, Any]:
        if message.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[message.full_name])
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placeholder: messages may recurse
            self.schemas[message.full_name] = self.message_schema(message)
        return {"$ref": SCHEMA_PREFIX + message.full_name}

    def message_schema(
        self, message: Descriptor, excluded: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in message.fields:
            if field.name in excluded:
                continue
            properties[field.json_name] = self.field_schema(field)
            if field_behaviors(field) & {field_behavior_pb2.REQUIRED}:
                required.append(field.json_name)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        choices = _real_oneofs(message, excluded)
        if len(choices) == 1:
            schema = _one_of_variants(message, schema, choices[0])
        description = self.comments.of_message(message)
        if description:
            schema["description"] = description
        return schema

    def enum_ref(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name not in self.schemas:
            lines = [self.comments.get(enum.full_name)]
            for value in enum.values:
                text = self.comments.of_enum_value(enum, value.name)
                lines.append(f"- `{value.name}`: {text}" if text else f"- `{value.name}`")
            self.schemas[enum.full_name] = {
                "type": "string",
                "enum": [value.name for value in enum.values],
                "description": "\n".join(line for line in lines if line),
            }
        return {"$ref": SCHEMA_PREFIX + enum.full_name}

    def field_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field) and field.message_type is not None:
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self.value_schema(value_field),
            }
        elif is_repeated(field):
            schema = {"type": "array", "items": self.value_schema(field)}
        else:
            schema = self.value_schema(field)
        return self._annotate(_non_empty_when_required(schema, field), field)

    def value_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of the field (an element when it is repeated)."""
        if field.message_type is not None:
            return self.message_ref(field.message_type)
        if field.enum_type is not None:
            return self.enum_ref(field.enum_type)
        return dict(SCALARS[field.type])

    def _annotate(self, schema: dict[str, Any], field: FieldDescriptor) -> dict[str, Any]:
        notes = [self.comments.of_field(field)]
        behaviors = field_behaviors(field)
        if field.containing_oneof is not None and not field.containing_oneof.name.startswith("_"):
            others = [f.json_name for f in field.containing_oneof.fields if f is not field]
            notes.append(f"At most one of `{field.json_name}`, `{'`, `'.join(others)}`.")
        if field_behavior_pb2.IMMUTABLE in behaviors:
            notes.append("Immutable once set.")
        annotations: dict[str, Any] = {}
        description = " ".join(note for note in notes if note)
        if description:
            annotations["description"] = description
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            annotations["readOnly"] = True
        if not annotations:
            return schema
        if "$ref" in schema:
            # OpenAPI 3.0 ignores siblings of $ref; allOf carries them.
            return {"allOf": [schema], **annotations}
        return {**schema, **annotations}


Oneof = tuple[str, list[FieldDescriptor]]


def _real_oneofs(message: Descriptor, excluded: frozenset[str]) -> list[Oneof]:
    """Name and members of each oneof that can hold more than one field (proto3
    `optional` makes a synthetic oneof of one), leaving out `excluded` fields."""
    choices = []
    for oneof in message.oneofs:
        members = [field for field in oneof.fields if field.name not in excluded]
        if len(members) > 1:
            choices.append((oneof.name, members))
    return choices


def _one_of_variants(message: Descriptor, schema: dict[str, Any], oneof: Oneof) -> dict[str, Any]:
    """The object as `oneOf` its shapes: without any member of the oneof, or with exactly
    one. Each shape is a closed object (additionalProperties false), so exactly one matches;
    generators make a union type of them. (A `not: {required: [a, b]}` says the same, but
    generators ignore or misread it.)"""
    oneof_name, members = oneof
    names = {field.json_name for field in members}
    common = {name: value for name, value in schema["properties"].items() if name not in names}
    required = list(schema.get("required", []))

    def variant(title: str, member: FieldDescriptor | None) -> dict[str, Any]:
        properties = dict(common)
        needed = [name for name in required if name not in names]
        if member is not None:
            properties[member.json_name] = schema["properties"][member.json_name]
            needed.append(member.json_name)
        shape: dict[str, Any] = {
            "title": title,
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if needed:
            shape["required"] = needed
        return shape

    return {
        "oneOf": [
            variant(f"{message.name}Without{_camel(oneof_name)}", None),
            *(variant(f"{message.name}With{_camel(m.name)}", m) for m in members),
        ]
    }


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def _non_empty_when_required(schema: dict[str, Any], field: FieldDescriptor) -> dict[str, Any]:
    """A REQUIRED string or list must be non-empty: its empty value is the unset one."""
    if field_behavior_pb2.REQUIRED not in field_behaviors(field) or is_map(field):
        return schema
    if schema.get("type") == "array":
        return {**schema, "minItems": 1}
    if schema.get("type") == "string" and "enum" not in schema and "format" not in schema:
        return {**schema, "minLength": 1}
    return schema


def field_behaviors(field: FieldDescriptor) -> set[int]:
    options = field.GetOptions()
    return set(options.Extensions[field_behavior_pb2.field_behavior])


def build_document(
    routes: Sequence[Route],
    comments: Comments,
    *,
    title: str,
    version: str,
    server_url: str | None = None,
    legacy_routes: bool = False,
) -> dict[str, Any]:
    """The document; `servers` is left out without `server_url` (`with_server` adds it
    when the document is served, from the settings or the request)."""
    schemas = SchemaBuilder(comments)
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for route in routes:
        operation = _operation(route, schemas, comments)
        operation_id = operation["operationId"]
        counter = 2
        while operation["operationId"] in operation_ids:  # additional bindings
            operation["operationId"] = f"{operation_id}{counter}"
            counter += 1
        operation_ids.add(operation["operationId"])
        paths.setdefault(route.template.openapi_path(), {})[route.http_method.lower()] = operation
    paths.update(_probe_paths())
    if legacy_routes:
        paths.update(legacy.openapi_paths())
    services = sorted({route.service for route in routes}, key=lambda s: s.full_name)
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": API_DESCRIPTION},
        "tags": [
            {"name": service.name, "description": comments.get(service.full_name)}
            for service in services
        ]
        + [{"name": "Probes", "description": "Liveness and readiness; no token needed."}]
        + (
            [{"name": "Legacy", "description": "The predecessor's routes, deprecated."}]
            if legacy_routes
            else []
        ),
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": {
                **dict(sorted(schemas.schemas.items())),
                **_gateway_schemas(),
                **(legacy.openapi_schemas() if legacy_routes else {}),
            },
            "responses": {
                "Error": {
                    "description": "An error: a google.rpc.Status with an ErrorInfo reason.",
                    "headers": _request_id_header(),
                    "content": {"application/json": {"schema": _ref(ERROR_SCHEMA)}},
                }
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from MODELYARD_GATEWAY_API_TOKENS.",
                }
            },
        },
    }
    return document if server_url is None else with_server(document, server_url)


def with_server(document: dict[str, Any], server_url: str) -> dict[str, Any]:
    """The document with `servers` naming `server_url`, placed after `info`."""
    head = {key: document[key] for key in ("openapi", "info")}
    servers = [{"url": server_url, "description": "This gateway."}]
    return {**head, "servers": servers, **document}


def document_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=1).encode()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_PREFIX + name}


def _request_id_header() -> dict[str, Any]:
    return {
        "X-Request-Id": {
            "description": "The request's id: the client's X-Request-Id, or a generated one.",
            "schema": {"type": "string"},
        }
    }


def _operation(route: Route, schemas: SchemaBuilder, comments: Comments) -> dict[str, Any]:
    description = comments.of_method(route.method)
    summary = description.split("\n\n", 1)[0].replace("\n", " ")
    if len(summary) > 120:
        summary = summary.split(". ", 1)[0].rstrip(".") + "."
    operation: dict[str, Any] = {
        "operationId": f"{route.service.name}_{route.method.name}",
        "tags": [route.service.name],
        "summary": summary,
        "description": description,
        "parameters": _path_parameters(route, schemas) + _query_parameters(route, schemas),
        "responses": {
            "200": _success_response(route, schemas),
            **_client_error_responses(route),
            "default": {"$ref": "#/components/responses/Error"},
        },
        "x-grpc-method": route.grpc_path,
    }
    body = _request_body(route, schemas)
    if body is not None:
        operation["requestBody"] = body
    if not operation["parameters"]:
        del operation["parameters"]
    return operation


def _client_error_responses(route: Route) -> dict[str, Any]:
    """The 4xx every route can answer, each an Error document (google.rpc.Status JSON):
    400 for bad input, 401 without a valid token, 404 for an unknown resource named in
    the path. Other codes (409, 429, 5xx, ...) fall under `default`."""
    error = {"$ref": "#/components/responses/Error"}
    responses = {"400": error, "401": error}
    if route.template.variables:
        responses["404"] = error
    return responses


def _path_parameters(route: Route, schemas: SchemaBuilder) -> list[dict[str, Any]]:
    parameters = []
    for variable in route.template.variables:
        field = _resolve(route.method.input_type, variable)
        schema = _parameter_schema(field, schemas)
        if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
            schema["minLength"] = 1
        parameters.append(
            {
                "name": ".".join(variable),
                "in": "path",
                "required": True,
                "description": schemas.comments.of_field(field),
                "schema": schema,
            }
        )
    return parameters


def _query_parameters(route: Route, schemas: SchemaBuilder) -> list[dict[str, Any]]:
    if route.kind is RouteKind.UPLOAD:
        header = route.upload_header_field
        assert header is not None
        assert header.message_type is not None
        return _flatten(header.message_type, "", frozenset(), schemas, 0)
    if not route.accepts_query:
        return []
    return _flatten(route.method.input_type, "", route.bound_fields, schemas, 0)


def _flatten(
    message: Descriptor,
    prefix: str,
    excluded: frozenset[str],
    schemas: SchemaBuilder,
    depth: int,
) -> list[dict[str, Any]]:
    """Every scalar leaf of `message` as a query parameter, nested names dotted."""
    parameters: list[dict[str, Any]] = []
    for field in message.fields:
        if field.name in excluded or is_map(field):
            continue
        if field_behavior_pb2.OUTPUT_ONLY in field_behaviors(field):
            continue
        name = prefix + field.json_name
        nested = field.message_type
        if nested is not None and nested.full_name not in SCALAR_MESSAGES:
            if not is_repeated(field) and depth < 3:
                parameters += _flatten(nested, name + ".", frozenset(), schemas, depth + 1)
            continue
        schema = _non_empty_when_required(_parameter_schema(field, schemas), field)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": depth == 0 and field_behavior_pb2.REQUIRED in field_behaviors(field),
            "description": schemas.comments.of_field(field),
            "schema": schema,
        }
        if is_repeated(field):
            parameter["schema"] = {"type": "array", "items": schema}
            parameter["style"] = "form"
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


def _parameter_schema(field: FieldDescriptor, schemas: SchemaBuilder) -> dict[str, Any]:
    if field.enum_type is not None:
        enum = field.enum_type
        return {"type": "string", "enum": [value.name for value in enum.values]}
    if field.message_type is not None:
        return dict(WELL_KNOWN[field.message_type.full_name])
    return dict(PARAMETER_SCALARS[field.type])


def _resolve(message: Descriptor, path: Sequence[str]) -> FieldDescriptor:
    current: Descriptor | None = message
    found: FieldDescriptor | None = None
    for name in path:
        found = find_field(current, name) if current is not None else None
        assert found is not None, f"no field {'.'.join(path)} in {message.full_name}"
        current = found.message_type
    assert found is not None
    return found


def _request_body(route: Route, schemas: SchemaBuilder) -> dict[str, Any] | None:
    if route.kind is RouteKind.UPLOAD:
        binary = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
        return {
            "required": True,
            "description": "The file's bytes, streamed.",
            "content": {media_type: binary for media_type in route.media.upload_types},
        }
    if not route.body:
        return None
    request = route.method.input_type
    if route.body == "*":
        path_fields = frozenset(variable[0] for variable in route.template.variables)
        schema = schemas.message_schema(request, excluded=path_fields)
        required = bool(schema.get("required"))
    else:
        field = request.fields_by_name[route.body]
        schema = schemas.field_schema(field)
        required = field_behavior_pb2.REQUIRED in field_behaviors(field)
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _success_response(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    response: dict[str, Any] = {"headers": _request_id_header()}
    output = route.method.output_type
    binary = {"schema": {"type": "string", "format": "binary"}}
    if route.kind is RouteKind.DOWNLOAD:
        response["description"] = "The bytes, streamed, as an attachment."
        types = (route.media.response_type, *route.media.other_response_types)
        response["content"] = {media_type: binary for media_type in types}
    elif route.kind is RouteKind.BYTES_STREAM:
        response["description"] = f"The concatenated `{output.fields[0].json_name}` bytes."
        response["content"] = {route.media.response_type: binary}
    elif route.kind is RouteKind.EVENTS:
        response["description"] = (
            f"Server-Sent Events: one `{route.media.event_name}` event per "
            f"{output.full_name} (its proto3 JSON on one `data:` line), `: keep-alive` "
            "comments while idle, and an `error` event carrying an error document "
            "if the stream fails once started."
        )
        response["content"] = {SSE_MEDIA_TYPE: {"schema": _event_schema(route, schemas)}}
    else:
        response["description"] = f"A {output.full_name}."
        response["content"] = {"application/json": {"schema": _response_schema(route, schemas)}}
    return response


def _event_schema(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    """The schema of one event of the stream (as OpenAPI 3.2's itemSchema would say)."""
    output = route.method.output_type
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": [route.media.event_name, "error"]},
            "id": {"type": "string"},
            "data": {
                "type": "string",
                "description": f"`{route.media.event_name}` events: a {output.full_name} in "
                "proto3 JSON; `error` events: an Error document.",
            },
        },
        # Inline, not a $ref: a component used only from an extension counts as unused.
        "x-data-schemas": {
            route.media.event_name: schemas.message_schema(output),
            "error": _ref(ERROR_SCHEMA),
        },
    }


def _response_schema(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    output = route.method.output_type
    if route.response_body:
        return schemas.field_schema(output.fields_by_name[route.response_body])
    return schemas.message_ref(output)


def _gateway_schemas() -> dict[str, Any]:
    return {
        ERROR_SCHEMA: {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "status", "message", "details"],
                    "properties": {
                        "code": {"type": "integer", "description": "The HTTP status code."},
                        "status": {
                            "type": "string",
                            "enum": [code.name for code in HTTP_STATUS_BY_CODE],
                            "description": "The canonical gRPC code.",
                        },
                        "message": {"type": "string"},
                        "details": {
                            "type": "array",
                            "items": WELL_KNOWN["google.protobuf.Any"],
                            "description": "Among them a google.rpc.ErrorInfo with the reason.",
                        },
                    },
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "backends": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    }


def _probe_paths() -> dict[str, Any]:
    def probe(operation_id: str, summary: str, extra: dict[str, Any]) -> dict[str, Any]:
        health = {"application/json": {"schema": _ref("Health")}}
        return {
            "get": {
                "operationId": operation_id,
                "tags": ["Probes"],
                "summary": summary,
                "security": [],
                "responses": {
                    "200": {"description": "OK.", "content": health},
                    **extra,
                },
            }
        }

    unavailable = {
        "503": {
            "description": "A backend is not serving.",
            "content": {"application/json": {"schema": _ref("Health")}},
        }
    }
    return {
        "/healthz": probe("healthz", "Liveness: the gateway process answers.", {}),
        "/readyz": probe("readyz", "Readiness: every backend service is SERVING.", unavailable),
    }
