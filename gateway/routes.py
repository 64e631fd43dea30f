"""The route table, built once at start from the `google.api.http` annotations.

Each annotated RPC (and each of its `additional_bindings`) becomes a `Route`:
an HTTP method, a compiled path template, the body binding and what kind of
call it is. Path templates follow google/api/http.proto:

    Template = "/" Segments [ ":" Verb ] ;  Segment = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;

Templates are matched against the raw (still percent-encoded) request path, so
an encoded "/" or ":" inside a value never changes which route matches; the
captured values are URL-decoded afterwards.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message

from gateway.descriptors import backend_of, find_field, grpc_path, message_class

HTTP_BODY = "google.api.HttpBody"


class RouteKind(enum.Enum):
    UNARY = "unary"
    # Client stream whose body field is bytes: the raw HTTP body, cut into chunks.
    UPLOAD = "upload"
    # Server stream of google.api.HttpBody: the bytes, with the content type they carry.
    DOWNLOAD = "download"
    # Server stream of a message with a single bytes field: the bytes, concatenated.
    BYTES_STREAM = "bytes_stream"
    # Any other server stream: Server-Sent Events, one proto3 JSON message each.
    EVENTS = "events"


@dataclass(frozen=True)
class StreamingMedia:
    """What the annotations cannot say about a streaming route's HTTP bodies."""

    # Content types accepted as an upload body.
    upload_types: tuple[str, ...] = ("application/octet-stream",)
    # Content type of a download or byte stream (documented, and sent by byte streams).
    response_type: str = "application/octet-stream"
    # Other content types a download may carry (its first message says which), documented.
    other_response_types: tuple[str, ...] = ()
    # SSE event name of each streamed message.
    event_name: str = "message"


# The streaming exceptions: only media types and event names, keyed by method full name.
STREAMING_MEDIA: dict[str, StreamingMedia] = {
    # The Dataset service tells formats from their bytes: these are the types clients
    # label its formats with (delimited text, compressed text, Parquet, XLSX).
    "modelyard.dataset.v1.DatasetService.UploadDataset": StreamingMedia(
        upload_types=(
            "text/csv",
            "application/octet-stream",
            "text/plain",
            "text/tab-separated-values",
            "application/csv",
            "application/gzip",
            "application/x-gzip",
            "application/zstd",
            "application/x-bzip2",
            "application/vnd.apache.parquet",
            "application/x-parquet",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        )
    ),
    # The original file as uploaded (or as a scoring job wrote it), labelled by its format,
    # or the rows as CSV or Parquet (`?format=CSV|PARQUET`).
    "modelyard.dataset.v1.DatasetService.DownloadDataset": StreamingMedia(
        response_type="text/csv",
        other_response_types=(
            "application/gzip",
            "application/zstd",
            "application/x-bzip2",
            "application/vnd.apache.parquet",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
    ),
    "modelyard.dataset.v1.DatasetService.ReadDataset": StreamingMedia(
        response_type="application/vnd.apache.arrow.stream"
    ),
    "modelyard.jobs.v1.JobsService.WatchTrainingJob": StreamingMedia(event_name="job"),
    "modelyard.jobs.v1.JobsService.WatchScoringJob": StreamingMedia(event_name="job"),
}


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class PathTemplate:
    text: str
    regex: re.Pattern[str]
    # Field paths of the variables, in the order of the regex groups.
    variables: tuple[tuple[str, ...], ...]
    verb: str
    literal_segments: int

    def match(self, raw_path: str) -> tuple[str, ...] | None:
        found = self.regex.match(raw_path)
        if found is None:
            return None
        return tuple(unquote(value) for value in found.groups())

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: `{field}` for every variable."""
        return _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", self.text)


_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=[^}]*)?\}")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_template(text: str) -> PathTemplate:
    if not text.startswith("/"):
        raise TemplateError(f"path template {text!r} does not start with '/'")
    path, verb = _split_verb(text[1:])
    variables: list[tuple[str, ...]] = []
    literal_segments = 0
    parts: list[str] = []
    for segment in _split_outside_braces(path, "/"):
        if segment.startswith("{"):
            if not segment.endswith("}"):
                raise TemplateError(f"unclosed variable in {text!r}")
            name, _, sub_template = segment[1:-1].partition("=")
            if not _FIELD_PATH.match(name):
                raise TemplateError(f"bad field path {name!r} in {text!r}")
            variables.append(tuple(name.split(".")))
            inner = "/".join(_segment_pattern(s) for s in (sub_template or "*").split("/"))
            parts.append(f"({inner})")
        else:
            if segment not in ("*", "**"):
                literal_segments += 1
            parts.append(_segment_pattern(segment))
    pattern = "^/" + "/".join(parts) + (":" + re.escape(verb) if verb else "") + "$"
    return PathTemplate(text, re.compile(pattern), tuple(variables), verb, literal_segments)


def _segment_pattern(segment: str) -> str:
    if segment == "*":
        return "[^/]+"
    if segment == "**":
        return ".+"
    if not segment or any(c in segment for c in "{}*"):
        raise TemplateError(f"bad path segment {segment!r}")
    return re.escape(segment)


def _split_verb(path: str) -> tuple[str, str]:
    """`a/{b}:cancel` → (`a/{b}`, `cancel`): a ':' outside braces in the last segment."""
    depth = 0
    colon = -1
    for index, char in enumerate(path):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and char == "/":
            colon = -1
        elif depth == 0 and char == ":":
            colon = index
    if colon < 0:
        return path, ""
    return path[:colon], path[colon + 1 :]


def _split_outside_braces(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        depth += (char == "{") - (char == "}")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


@dataclass(frozen=True, eq=False)
class Route:
    http_method: str
    template: PathTemplate
    # "" (no body), "*" (the whole request) or a top-level field name.
    body: str
    response_body: str
    method: MethodDescriptor
    kind: RouteKind
    request_class: type[Message]
    response_class: type[Message]
    media: StreamingMedia
    # For UPLOAD: the field the query parameters fill (the stream's first message).
    upload_header_field: FieldDescriptor | None = None
    # Top-level fields bound by the path or the body: never query parameters.
    bound_fields: frozenset[str] = field(default_factory=frozenset)

    @property
    def grpc_path(self) -> str:
        return grpc_path(self.method)

    @property
    def backend(self) -> str:
        return backend_of(self.method.containing_service)

    @property
    def service(self) -> ServiceDescriptor:
        return self.method.containing_service

    @property
    def accepts_query(self) -> bool:
        """Fields not bound by the path become query parameters unless the body takes all."""
        return self.body != "*"

    @property
    def body_required(self) -> bool:
        """A whole-message body is required when a field it carries is REQUIRED."""
        if self.body != "*":
            return False
        path_fields = {variable[0] for variable in self.template.variables}
        return any(
            field_behavior_pb2.REQUIRED
            in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
            for field in self.method.input_type.fields
            if field.name not in path_fields
        )


def routes_of(services: Iterable[ServiceDescriptor]) -> list[Route]:
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            for binding in [rule, *rule.additional_bindings]:
                routes.append(_route(method, binding))
    return routes


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    http_method, path = _verb_and_path(method, rule)
    template = parse_template(path)
    request_type = method.input_type
    for variable in template.variables:
        _check_field_path(request_type, variable, method)
    kind = _kind(method, rule)
    header_field = _upload_header_field(method, rule) if kind is RouteKind.UPLOAD else None
    bound = {variable[0] for variable in template.variables}
    if rule.body and rule.body != "*":
        if find_field(request_type, rule.body) is None:
            raise TemplateError(f"{method.full_name}: body field {rule.body!r} does not exist")
        bound.add(rule.body)
    return Route(
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        method=method,
        kind=kind,
        request_class=message_class(request_type),
        response_class=message_class(method.output_type),
        media=STREAMING_MEDIA.get(method.full_name, StreamingMedia()),
        upload_header_field=header_field,
        bound_fields=frozenset(_proto_name(request_type, name) for name in bound),
    )


def _proto_name(message: Descriptor, name: str) -> str:
    found = find_field(message, name)
    return found.name if found is not None else name


def _verb_and_path(method: MethodDescriptor, rule: http_pb2.HttpRule) -> tuple[str, str]:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise TemplateError(f"{method.full_name}: http rule without a pattern")
    if pattern == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return pattern.upper(), str(getattr(rule, pattern))


def _check_field_path(message: Descriptor, path: Sequence[str], method: MethodDescriptor) -> None:
    current: Descriptor | None = message
    for name in path:
        found = find_field(current, name) if current is not None else None
        if found is None:
            raise TemplateError(f"{method.full_name}: no field {'.'.join(path)!r}")
        current = found.message_type


def _kind(method: MethodDescriptor, rule: http_pb2.HttpRule) -> RouteKind:
    if method.client_streaming and method.server_streaming:
        raise TemplateError(f"{method.full_name}: bidirectional streams have no REST mapping")
    if method.client_streaming:
        body = find_field(method.input_type, rule.body) if rule.body else None
        if body is None or body.type != FieldDescriptor.TYPE_BYTES:
            raise TemplateError(f"{method.full_name}: a client stream needs a bytes body field")
        return RouteKind.UPLOAD
    if not method.server_streaming:
        return RouteKind.UNARY
    output = method.output_type
    if output.full_name == HTTP_BODY:
        return RouteKind.DOWNLOAD
    if len(output.fields) == 1 and output.fields[0].type == FieldDescriptor.TYPE_BYTES:
        return RouteKind.BYTES_STREAM
    return RouteKind.EVENTS


def _upload_header_field(method: MethodDescriptor, rule: http_pb2.HttpRule) -> FieldDescriptor:
    """The message field that shares the body field's oneof: the stream's first message."""
    body = find_field(method.input_type, rule.body)
    assert body is not None
    candidates = [
        candidate
        for candidate in (body.containing_oneof.fields if body.containing_oneof else ())
        if candidate is not body and candidate.message_type is not None
    ]
    if len(candidates) != 1:
        raise TemplateError(
            f"{method.full_name}: an upload's body field must share a oneof with one header message"
        )
    return candidates[0]


@dataclass(frozen=True)
class Match:
    route: Route
    values: tuple[str, ...]


class RouteNotFound(Exception):
    pass


class MethodNotAllowed(Exception):
    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = tuple(allowed)


class Router:
    """Finds the route of a request; routes with a verb and more literals win."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(
            sorted(
                routes,
                key=lambda r: (not r.template.verb, -r.template.literal_segments),
            )
        )
        self._by_method: dict[str, tuple[Route, ...]] = {}
        for route in self.routes:
            self._by_method[route.http_method] = (
                *self._by_method.get(route.http_method, ()),
                route,
            )

    def match(self, http_method: str, raw_path: str) -> Match:
        found: Match | None = None
        for route in self._by_method.get(http_method, ()):
            values = route.template.match(raw_path)
            if values is not None:
                found = Match(route, values)
                break
        if found is not None and (found.route.template.verb or ":" not in raw_path):
            return found
        others = [
            route
            for route in self.routes
            if route.http_method != http_method and route.template.match(raw_path) is not None
        ]
        # `GET /v1/jobs/x:cancel` is the cancel route asked with the wrong method, not a
        # job named "x:cancel" (that one is written x%3Acancel).
        with_verb = [route for route in others if route.template.verb]
        if found is not None and not with_verb:
            return found
        others = with_verb or others
        if others:
            raise MethodNotAllowed(sorted({route.http_method for route in others}))
        raise RouteNotFound(raw_path)
