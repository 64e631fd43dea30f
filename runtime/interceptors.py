"""Server interceptors every service installs.

- `ServiceTokenInterceptor` refuses calls without the shared service token or a
  project's API token, and calls whose role is below what the RPC needs
  (runtime/access.py); health and reflection stay open: probes and grpcurl
  discovery need them.
- `RequestContextInterceptor` gives every call a request id, logs it as one
  JSON line with its code and latency, and turns `ServiceError` into the
  status the contracts define; any other exception becomes INTERNAL without
  leaking its text.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
from google.rpc import status_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from runtime import access, reasons
from runtime.access import Caller
from runtime.errors import STATUS_DETAILS_KEY, ServiceError, code_from_number, make_status
from runtime.limits import correlation_id
from runtime.logs import log_context
from runtime.metrics import record_call
from runtime.secrets import tokens_equal
from runtime.tracing import context_from_pairs, tracer

logger = logging.getLogger("modelyard.rpc")

REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.", "/grpc.reflection.v1.")

ApiTokenResolver = Callable[[str], Awaitable[Caller]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item_key, value in details.invocation_metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


class ServiceTokenInterceptor(grpc.aio.ServerInterceptor):
    """Resolves every call's `Caller` (runtime/access.py) from its bearer token, refuses it
    when the token is unknown or its role is below what the RPC needs, and keeps the
    caller in a context variable for the handler."""

    def __init__(
        self, tokens: Sequence[str], resolve_api_token: ApiTokenResolver | None = None
    ) -> None:
        self._tokens = list(tokens)  # several during a rotation: new and old
        self._resolve_api_token = resolve_api_token

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        try:
            caller = await self._caller(handler_call_details)
        except ServiceError as error:
            return _rejecting_handler(handler, error.to_status())
        if not caller.may(access.required_role(method)):
            return _rejecting_handler(
                handler,
                make_status(
                    grpc.StatusCode.PERMISSION_DENIED,
                    reasons.ROLE_INSUFFICIENT,
                    f"this call needs the role {access.required_role(method).name.lower()}; "
                    f"the caller has {caller.role.name.lower()}",
                ),
            )
        return _acting_as(handler, caller)

    async def _caller(self, details: grpc.HandlerCallDetails) -> access.Caller:
        presented = _metadata_value(details, AUTHORIZATION_KEY) or ""
        scheme, _, token = presented.partition(" ")
        token = token.strip()
        # Compare with every token, so the time taken tells nothing about which matched.
        matches = [tokens_equal(token, accepted) for accepted in self._tokens]
        if scheme.lower() == "bearer" and any(matches):
            return _forwarded_caller(details)
        if (
            scheme.lower() == "bearer"
            and self._resolve_api_token is not None
            and access.parse_api_token(token) is not None
        ):
            return await self._resolve_api_token(token)
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED,
            reasons.SERVICE_TOKEN_INVALID,
            "this call needs a valid token: metadata 'authorization: Bearer <token>' "
            "(an API token of a project, or the service token)",
        )


def _forwarded_caller(details: grpc.HandlerCallDetails) -> access.Caller:
    """The service token acts for the project (and role) a modelyard service forwards."""
    project = _metadata_value(details, access.PROJECT_KEY)
    role_text = _metadata_value(details, access.ROLE_KEY)
    if project is not None and not access.PROJECT_ID.fullmatch(project):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.PROJECT_ID_INVALID,
            f"metadata {access.PROJECT_KEY} must be a project id",
        )
    if role_text is None:  # a service's own call: for one project when it names one
        return access.Caller(
            project or access.DEFAULT_PROJECT,
            access.Role.ADMIN,
            is_service=True,
            all_projects=project is None,
        )
    role = access.Role.parse(role_text)
    if role is None:
        raise ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            reasons.ROLE_INSUFFICIENT,
            f"metadata {access.ROLE_KEY} names no role",
        )
    return access.Caller(project or access.DEFAULT_PROJECT, role, is_service=False)


def _rejecting_handler(
    handler: grpc.RpcMethodHandler | None, status: status_pb2.Status
) -> grpc.RpcMethodHandler | None:
    if handler is None:
        return None

    async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with_status(context, status)

    return _replace_behaviour(handler, reject, reject)


def _acting_as(
    handler: grpc.RpcMethodHandler | None, caller: access.Caller
) -> grpc.RpcMethodHandler | None:
    """The handler, run with `caller` as runtime.access.current_caller()."""
    if handler is None:
        return None

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        behaviour = handler.unary_unary or handler.stream_unary
        token = access.set_caller(caller)
        try:
            return await behaviour(request, context)
        finally:
            access.reset_caller(token)

    async def streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        behaviour = handler.unary_stream or handler.stream_stream
        token = access.set_caller(caller)
        try:
            async for response in behaviour(request, context):
                yield response
        finally:
            access.reset_caller(token)

    return _replace_behaviour(handler, unary, streaming)


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        method = handler_call_details.method
        request_id = correlation_id(_metadata_value(handler_call_details, REQUEST_ID_KEY))

        metadata = handler_call_details.invocation_metadata or ()

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            behaviour = handler.unary_unary or handler.stream_unary
            with _call_context(method, request_id, metadata):
                started = time.perf_counter()
                try:
                    response = await behaviour(request, context)
                except BaseException as error:
                    await _abort_for(error, context, method, started)
                    raise
                _log_done(method, "OK", started)
                return response

        async def streaming(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            behaviour = handler.unary_stream or handler.stream_stream
            with _call_context(method, request_id, metadata):
                started = time.perf_counter()
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as error:
                    await _abort_for(error, context, method, started)
                    raise
                _log_done(method, "OK", started)

        return _replace_behaviour(handler, unary, streaming)


@contextlib.contextmanager
def _call_context(
    method: str, request_id: str, metadata: Sequence[tuple[str, str | bytes]]
) -> Iterator[None]:
    """Log lines carry the request id; a server span continues the caller's trace."""
    span = tracer().start_as_current_span(
        method,
        context=context_from_pairs(metadata),
        kind=SpanKind.SERVER,
        record_exception=False,
        set_status_on_exception=False,
    )
    with log_context(request_id=request_id, rpc=method), span:
        yield


async def _abort_for(
    error: BaseException,
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    started: float,
) -> None:
    """Abort the call with the status `error` stands for (raises), or just log it."""
    if isinstance(error, grpc.aio.AbortError):
        _log_done(method, "ABORTED", started)  # the handler aborted with its own status
        return
    if isinstance(error, ServiceError):
        _log_done(method, error.code.name, started, reason=error.reason)
        await abort_with_status(context, error.to_status())
    if isinstance(error, Exception):
        logger.exception("unhandled error in %s", method)
        _log_done(method, "INTERNAL", started)
        await abort_with_status(
            context, make_status(grpc.StatusCode.INTERNAL, reasons.INTERNAL, "internal error")
        )
    _log_done(method, "CANCELLED", started)


async def abort_with_status(
    context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status
) -> None:
    """End the call with `status`, its ErrorInfo carried in the standard trailer."""
    await context.abort(
        code_from_number(status.code),
        status.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
    )


def _log_done(method: str, code: str, started: float, reason: str | None = None) -> None:
    elapsed = time.perf_counter() - started
    record_call(method, code, elapsed)
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status", code)
    if code not in ("OK", "CANCELLED"):
        span.set_status(StatusCode.ERROR, reason or code)
    elapsed_ms = round(elapsed * 1000, 2)
    extra: dict[str, Any] = {"code": code, "elapsed_ms": elapsed_ms}
    if reason:
        extra["reason"] = reason
    logger.info("rpc %s %s", method, code, extra=extra)


def _replace_behaviour(
    handler: grpc.RpcMethodHandler,
    unary: Callable[..., Any],
    streaming: Callable[..., Any],
) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(streaming, deserialize, serialize)
