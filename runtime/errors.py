"""Errors as the contracts define them: a canonical gRPC code, a human message,
and a google.rpc.ErrorInfo detail whose `reason` is a stable UPPER_SNAKE code.

Handlers raise `ServiceError`; the server interceptor turns it into the gRPC
status. Clients read the reason back with `error_reason`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "modelyard"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# A status travels in response trailers, and gRPC refuses trailers over its metadata
# size limit (8 KiB by default) with RESOURCE_EXHAUSTED, which would hide the real
# error behind a 429. Whatever a handler puts in a status is bounded to fit.
MAX_STATUS_MESSAGE_CHARS = 1000
MAX_METADATA_VALUE_CHARS = 256
MAX_METADATA_ENTRIES = 16


class ServiceError(Exception):
    """An error the caller can act on, with the reason code clients match on."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})

    def to_status(self) -> status_pb2.Status:
        return make_status(self.code, self.reason, self.message, self.metadata)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"


def make_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
) -> status_pb2.Status:
    bounded = {
        key[:MAX_METADATA_VALUE_CHARS]: _bounded(value, MAX_METADATA_VALUE_CHARS)
        for key, value in list((metadata or {}).items())[:MAX_METADATA_ENTRIES]
    }
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=bounded)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(
        code=code.value[0],
        message=_bounded(message, MAX_STATUS_MESSAGE_CHARS),
        details=[detail],
    )


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_reason(status: status_pb2.Status) -> str | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None


def status_metadata(status: status_pb2.Status) -> dict[str, str]:
    """The ErrorInfo metadata of a status (empty when it has no ErrorInfo)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return dict(info.metadata)
    return {}


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The full status of a failed call, rebuilt from its trailers when it has none."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    return status_reason(status_from_rpc_error(error))


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return status_metadata(status_from_rpc_error(error))


def code_from_number(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def not_found(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message, metadata)


def invalid_argument(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata)


def failed_precondition(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, metadata)


def resource_exhausted(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, metadata)


def unavailable(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message, metadata)
