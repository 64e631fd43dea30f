"""Errors as JSON: the Google error shape carrying a google.rpc.Status.

    {"error": {"code": 404, "status": "NOT_FOUND", "message": "...",
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "DATASET_NOT_FOUND", "domain": "modelyard",
                            "metadata": {...}}]}}

`code` is the HTTP status google/rpc/code.proto gives the gRPC code; every
error carries an ErrorInfo with a stable reason, the backend's own when it sent
one, else one the gateway names.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2  # noqa: F401  (ErrorInfo in the pool)
from starlette.responses import Response

from gateway import reasons
from runtime.errors import code_from_number, make_status, status_from_rpc_error, status_reason

# google/rpc/code.proto, "HTTP Mapping" of each code.
HTTP_STATUS_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# Reasons for a backend status that came without an ErrorInfo (a transport failure,
# a deadline hit on the gateway's side): the code's own name unless listed here.
_REASON_WITHOUT_DETAILS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: reasons.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE: reasons.BACKEND_UNAVAILABLE,
    grpc.StatusCode.UNKNOWN: reasons.BACKEND_ERROR,
    grpc.StatusCode.INTERNAL: reasons.BACKEND_ERROR,
}

ERROR_MEDIA_TYPE = "application/json"


class GatewayError(Exception):
    """An error the gateway itself answers with, before or instead of calling a backend."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        http_status: int | None = None,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = make_status(code, reason, message, metadata)
        # A few gateway errors have an HTTP status of their own (405, 413, 415).
        self.http_status = http_status or HTTP_STATUS_BY_CODE[code]
        self.headers = dict(headers or {})

    def response(self) -> ErrorResponse:
        return error_response(self.status, self.http_status, self.headers)


def invalid_argument(reason: str, message: str, **metadata: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata=metadata)


def status_of_rpc_error(error: grpc.aio.AioRpcError, service: str) -> status_pb2.Status:
    """The backend's status, completed with an ErrorInfo when it had none."""
    status = status_from_rpc_error(error)
    if status_reason(status) is not None:
        return status
    code = code_from_number(status.code)
    reason = _REASON_WITHOUT_DETAILS.get(code, code.name)
    message = status.message
    if code is grpc.StatusCode.UNAVAILABLE:
        # The transport's text names internal addresses; clients need only the service.
        message = f"{service} is unavailable; try again later"
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"{service} did not answer within the deadline"
    return make_status(code, reason, message, {"service": service})


def http_status_of(status: status_pb2.Status) -> int:
    return HTTP_STATUS_BY_CODE.get(code_from_number(status.code), 500)


def error_document(status: status_pb2.Status, http_status: int) -> dict[str, Any]:
    return {
        "error": {
            "code": http_status,
            "status": code_from_number(status.code).name,
            "message": status.message,
            "details": [_detail_json(detail) for detail in status.details],
        }
    }


def error_json(status: status_pb2.Status, http_status: int | None = None) -> bytes:
    document = error_document(status, http_status or http_status_of(status))
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class ErrorResponse(Response):
    """An error document; keeps its reason for the access log."""

    media_type = ERROR_MEDIA_TYPE

    def __init__(
        self,
        status: status_pb2.Status,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        http_status = http_status or http_status_of(status)
        super().__init__(error_json(status, http_status), status_code=http_status, headers=headers)
        self.reason = status_reason(status) or ""


def error_response(
    status: status_pb2.Status,
    http_status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> ErrorResponse:
    return ErrorResponse(status, http_status, headers)


def _detail_json(detail: Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(detail, always_print_fields_with_no_presence=True)
    except (TypeError, KeyError, json_format.Error):
        # A detail type this gateway does not know: keep it, opaque but intact.
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}
